package publish_test

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/datastore/boltstore"
	"writ.dev/writ/ca/publish"
)

// failingStore fails FetchBundle while down is set.
type failingStore struct {
	*boltstore.Store
	down  atomic.Bool
	calls atomic.Int32
}

var errDown = errors.New("datastore down")

func (s *failingStore) FetchBundle(ctx context.Context, td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	s.calls.Add(1)
	if s.down.Load() {
		return nil, errDown
	}
	return s.Store.FetchBundle(ctx, td)
}

// TestRetryOnClock: a failed read is retried a second later on the
// Source's clock, with no datastore change to prompt it.
func TestRetryOnClock(t *testing.T) {
	bolt, err := boltstore.Open(filepath.Join(t.TempDir(), "db"), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bolt.Close() })
	setBundle(t, bolt, nil, 1)
	store := &failingStore{Store: bolt}
	store.down.Store(true)
	clk := fakeclock.New(time.Now())
	src := publish.NewSource(td, store, nil, clk)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { src.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	wait, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	// The first read failed, and the retry waits on the clock.
	if err := clk.WaitForTimerWithin(wait, time.Second); err != nil {
		t.Fatalf("no retry armed on the clock after a failed read: %v", err)
	}
	if n := store.calls.Load(); n != 1 {
		t.Fatalf("%d reads before the retry is due, want 1", n)
	}
	if w := do(publish.BundleHandler(src), http.MethodGet, "/", nil); w.Code != http.StatusServiceUnavailable {
		t.Fatalf("bundle before a read succeeded: %d", w.Code)
	}
	store.down.Store(false)
	clk.Advance(time.Second)
	select {
	case <-src.Ready():
	case <-wait.Done():
		t.Fatal("the retry a second later did not read the bundle")
	}
}
