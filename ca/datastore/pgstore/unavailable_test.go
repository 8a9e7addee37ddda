package pgstore_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/datastore/pgstore"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/internal/pgtest"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func testEntry(path string) *entry.Entry {
	return &entry.Entry{
		SPIFFEID:  spiffeid.RequireFromPath(td, path),
		ParentID:  spiffeid.RequireFromPath(td, "/agent/1"),
		Selectors: []entry.Selector{{Type: "unix", Value: "uid:1"}},
	}
}

func createEntry(ctx context.Context, s datastore.Store, path string) (*entry.Entry, error) {
	res, err := s.CreateEntries(ctx, []*entry.Entry{testEntry(path)})
	if err != nil {
		return nil, err
	}
	return res[0].Entry, res[0].Err
}

// waitSignal waits for a value on ch and returns how long it took.
func waitSignal(t *testing.T, what string, ch <-chan struct{}, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case <-ch:
		return time.Since(start)
	case <-time.After(timeout):
		t.Fatalf("%s: no signal within %s", what, timeout)
		return 0
	}
}

func drain(ch <-chan struct{}) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

// TestWatchAcrossHandlesIsPrompt checks that a change through one Store
// reaches another's watchers through the change feed, well before the
// safety poll would find it.
func TestWatchAcrossHandlesIsPrompt(t *testing.T) {
	dsn := pgtest.Shared(t).NewDatabase(t)
	a, b := open(t, dsn), open(t, dsn)
	ch, stop := a.Watch()
	defer stop()
	var lat []time.Duration
	for i := range 20 {
		drain(ch)
		start := time.Now()
		if _, err := createEntry(t.Context(), b, fmt.Sprintf("/w/%d", i)); err != nil {
			t.Fatal(err)
		}
		waitSignal(t, "a's watch after b's write", ch, 10*time.Second)
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	t.Logf("write through b to signal at a: median %s, max %s", lat[len(lat)/2], lat[len(lat)-1])
	if max := lat[len(lat)-1]; max >= pgstore.SafetyPoll/2 {
		t.Errorf("slowest signal took %s: the change feed did not deliver it", max)
	}
}

// TestConnectionLoss stops PostgreSQL under a Store: calls fail promptly
// with datastore.ErrUnavailable; once it is back the same Store works
// again, its watchers are signaled to catch up, and changes through
// another Store reach them again.
func TestConnectionLoss(t *testing.T) {
	c := pgtest.New(t)
	dsn := c.NewDatabase(t)
	a, b := open(t, dsn), open(t, dsn)
	ctx := t.Context()
	e, err := createEntry(ctx, a, "/w/before")
	if err != nil {
		t.Fatal(err)
	}
	ch, stop := a.Watch()
	defer stop()

	c.Stop(t)
	drain(ch)
	agentID := spiffeid.RequireFromPath(td, "/agent/1")
	calls := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"FetchEntry", func(ctx context.Context) error { _, err := a.FetchEntry(ctx, e.ID); return err }},
		{"ListEntries", func(ctx context.Context) error { _, err := a.ListEntries(ctx, datastore.EntryFilter{}); return err }},
		{"CreateEntries", func(ctx context.Context) error { _, err := createEntry(ctx, a, "/w/during"); return err }},
		{"UpdateEntry", func(ctx context.Context) error {
			_, err := a.UpdateEntry(ctx, e.ID, func(e *entry.Entry) error { e.Admin = true; return nil })
			return err
		}},
		{"UpdateAgent", func(ctx context.Context) error {
			_, err := a.UpdateAgent(ctx, agentID, func(*datastore.Agent) error { return nil })
			return err
		}},
		{"ConsumeJoinToken", func(ctx context.Context) error { _, err := a.ConsumeJoinToken(ctx, "h", time.Now()); return err }},
		{"ListBundles", func(ctx context.Context) error { _, err := a.ListBundles(ctx); return err }},
		{"ListCAKeys", func(ctx context.Context) error { _, err := a.ListCAKeys(ctx); return err }},
		{"Events", func(ctx context.Context) error { _, err := a.Events(ctx, 0, 10); return err }},
		{"Snapshot", func(ctx context.Context) error { _, err := a.Snapshot(ctx); return err }},
		{"PutServer", func(ctx context.Context) error { return a.PutServer(ctx, &datastore.Server{ID: "s"}) }},
	}
	for _, c := range calls {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		start := time.Now()
		err := c.call(cctx)
		took := time.Since(start)
		cancel()
		if !errors.Is(err, datastore.ErrUnavailable) {
			t.Errorf("%s while PostgreSQL is down: got %v, want datastore.ErrUnavailable", c.name, err)
		}
		if took > pgstore.DefaultConnectTimeout+time.Second {
			t.Errorf("%s while PostgreSQL is down took %s", c.name, took)
		}
	}

	c.Start(t)
	// The pool reconnects on its own: the same Store works again.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := a.FetchEntry(ctx, e.ID)
		if err == nil {
			break
		}
		if !errors.Is(err, datastore.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("FetchEntry after PostgreSQL came back: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // polling a real process, with a deadline
	}
	// The change feed reconnects and signals the watchers so they catch
	// up.
	waitSignal(t, "a's watch once its change feed is back", ch, 30*time.Second)
	// And it follows changes through other Stores again.
	for i := 0; ; i++ {
		drain(ch)
		if _, err := createEntry(ctx, b, fmt.Sprintf("/w/after/%d", i)); err == nil {
			break
		} else if !errors.Is(err, datastore.ErrUnavailable) || i > 100 {
			t.Fatalf("CreateEntries through b after PostgreSQL came back: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // polling a real process, with a deadline
	}
	took := waitSignal(t, "a's watch after b's write", ch, 10*time.Second)
	if took >= pgstore.SafetyPoll/2 {
		t.Errorf("a's watcher learned of b's write after %s: the change feed did not deliver it", took)
	}
	evs, err := a.Events(ctx, e.Revision, 100)
	if err != nil || len(evs) == 0 {
		t.Fatalf("Events after the outage: %v, %v", evs, err)
	}
}
