package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/datastore/boltstore"
)

// flakyStore fails PutServer while failing is set.
type flakyStore struct {
	*boltstore.Store
	failing atomic.Bool
	calls   atomic.Int32
}

var errInjected = errors.New("injected datastore failure")

func (f *flakyStore) PutServer(ctx context.Context, s *datastore.Server) error {
	f.calls.Add(1)
	if f.failing.Load() {
		return errInjected
	}
	return f.Store.PutServer(ctx, s)
}

// waitHeartbeat polls the store until the record of id has heartbeat
// want.
func waitHeartbeat(t *testing.T, s datastore.Store, id string, want time.Time) *datastore.Server {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		list, err := s.ListServers(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, srv := range list {
			if srv.ID == id && srv.Heartbeat.Equal(want) {
				return srv
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no heartbeat at %s for %s within 10s; servers: %+v", want, id, list)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRegistryHeartbeat(t *testing.T) {
	bolt, err := boltstore.Open(filepath.Join(t.TempDir(), "db"), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer bolt.Close()
	store := &flakyStore{Store: bolt}
	start := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	clk := fakeclock.New(start)
	r := newRegistry(store, clk, slog.New(slog.DiscardHandler), "0123456789abcdef", "10.0.0.1:8081")
	if err := r.register(t.Context()); err != nil {
		t.Fatal(err)
	}
	rec := waitHeartbeat(t, bolt, "0123456789abcdef", start)
	if rec.Address != "10.0.0.1:8081" || !rec.StartedAt.Equal(start) || rec.Version == "" {
		t.Fatalf("registered %+v", rec)
	}

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.run(ctx) }()

	// One beat per interval, not before.
	if err := clk.WaitForTimers(ctx, 1); err != nil {
		t.Fatal(err)
	}
	clk.Advance(HeartbeatInterval - time.Second)
	if n := store.calls.Load(); n != 1 {
		t.Fatalf("%d writes before the interval, want only the registration", n)
	}
	clk.Advance(time.Second)
	waitHeartbeat(t, bolt, "0123456789abcdef", start.Add(HeartbeatInterval))

	// A failed beat is retried at the next one; the server keeps going.
	store.failing.Store(true)
	for store.calls.Load() < 3 {
		if err := clk.WaitForTimers(ctx, 1); err != nil {
			t.Fatal(err)
		}
		clk.Advance(HeartbeatInterval)
	}
	store.failing.Store(false)
	if err := clk.WaitForTimers(ctx, 1); err != nil {
		t.Fatal(err)
	}
	clk.Advance(HeartbeatInterval)
	last := clk.Now()
	rec = waitHeartbeat(t, bolt, "0123456789abcdef", last)
	if !rec.StartedAt.Equal(start) {
		t.Errorf("a heartbeat changed StartedAt to %s", rec.StartedAt)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}

func TestAdvertisedAddress(t *testing.T) {
	lis := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40001}
	for _, tc := range []struct{ bind, want string }{
		{"127.0.0.1:8081", "127.0.0.1:8081"},
		{"ca.example.org:8081", "ca.example.org:8081"},
		{"127.0.0.1:0", "127.0.0.1:40001"},
		{"[::1]:0", "[::1]:40001"},
		{":0", ":40001"},
	} {
		if got := advertisedAddress(tc.bind, lis); got != tc.want {
			t.Errorf("advertisedAddress(%q) = %q, want %q", tc.bind, got, tc.want)
		}
	}
}
