package server

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/datastore/boltstore"
)

// TestPrunerRemovesExpiredRecords: at start and at each interval the
// pruner removes what has expired, and only that.
func TestPrunerRemovesExpiredRecords(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := fakeclock.New(t0)
	store, err := boltstore.Open(filepath.Join(t.TempDir(), "db"), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx := t.Context()
	id := spiffeid.RequireFromString("spiffe://example.org/writ/agent/a")
	for _, tok := range []*datastore.JoinToken{{Hash: "old", SPIFFEID: id, ExpiresAt: t0}, {Hash: "new", SPIFFEID: id, ExpiresAt: t0.Add(time.Hour)}} {
		if err := store.CreateJoinToken(ctx, tok); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range []struct {
		hash string
		exp  time.Time
	}{{"a-old", t0}, {"a-new", t0.Add(pruneInterval + time.Second)}} {
		if err := store.UseClientAssertion(ctx, a.hash, a.exp); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []*datastore.Revocation{{JTI: "old", RevokedAt: t0, ExpiresAt: t0}, {JTI: "new", RevokedAt: t0, ExpiresAt: t0.Add(pruneInterval)}} {
		if err := store.PutRevocation(ctx, r); err != nil {
			t.Fatal(err)
		}
	}

	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- (&pruner{store: store, clock: clk, log: slog.New(slog.DiscardHandler)}).run(runCtx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	wait := func() {
		t.Helper()
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		defer wcancel()
		if err := clk.WaitForTimers(wctx, 1); err != nil {
			t.Fatal(err)
		}
	}
	wait() // the first pass is done once the timer is armed
	if err := store.UseClientAssertion(ctx, "a-old", t0.Add(time.Hour)); err != nil {
		t.Errorf("the expired assertion was not pruned: %v", err)
	}
	if err := store.UseClientAssertion(ctx, "a-new", t0.Add(time.Hour)); err == nil {
		t.Error("a live assertion was pruned")
	}
	if _, err := store.ConsumeJoinToken(ctx, "old", t0); err == nil {
		t.Error("the expired join token was not pruned")
	}
	revs, err := store.ListRevocations(ctx, time.Time{})
	if err != nil || len(revs) != 1 || revs[0].JTI != "new" {
		t.Fatalf("revocations after the first pass: %+v %v", revs, err)
	}

	clk.Advance(pruneInterval)
	wait()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		revs, err = store.ListRevocations(ctx, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		if len(revs) == 1 && time.Now().Before(deadline) {
			continue
		}
		break
	}
	if len(revs) != 0 {
		t.Fatalf("revocations after their expiry and a second pass: %+v", revs)
	}
}
