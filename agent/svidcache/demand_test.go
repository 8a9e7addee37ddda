package svidcache_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/entry"
)

func boundedCache(t *testing.T, clk *fakeclock.Clock, max int) *svidcache.Cache {
	t.Helper()
	c, err := svidcache.New(svidcache.Config{TrustDomain: td, Clock: clk, MaxX509SVIDs: max})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestUnmatchedSVIDsBounded: SVIDs of entries no subscription matches
// never exceed the bound (least recently used go first), while SVIDs a
// subscription matches are kept whatever their number.
func TestUnmatchedSVIDsBounded(t *testing.T) {
	const bound, n = 50, 400
	clk := fakeclock.New(t0)
	ca := newTestCA(t, t0)
	c := boundedCache(t, clk, bound)
	es := make([]*entry.Entry, n)
	for i := range es {
		// Entries 0-99 belong to uid 1, the rest to one uid each.
		uid := 1
		if i >= 100 {
			uid = 1000 + i
		}
		es[i] = newEntry(t, fmt.Sprintf("/svc/%d", i), fmt.Sprintf("unix:uid:%d", uid))
	}
	c.Apply(svidcache.Update{Full: true, Entries: es, Bundle: ca.bundle})
	sub := c.Subscribe(sels(t, "unix:uid:1"))
	for i, e := range es {
		if err := c.SetX509SVID(ca.svid(t, e, t0, time.Hour)); err != nil {
			t.Fatal(err)
		}
		st := c.Stats()
		if st.UnmatchedX509SVIDs > bound {
			t.Fatalf("after %d SVIDs: %d unmatched held, bound %d", i+1, st.UnmatchedX509SVIDs, bound)
		}
		if want := min(i+1, 100) + min(max(i+1-100, 0), bound); st.X509SVIDs != want {
			t.Fatalf("after %d SVIDs: %d held, want %d", i+1, st.X509SVIDs, want)
		}
	}
	if got := len(sub.State().X509SVIDs); got != 100 {
		t.Fatalf("subscriber sees %d SVIDs, want all 100 of its entries", got)
	}
	// The most recent unmatched ones are kept, and a read makes one
	// recent.
	if _, ok := c.X509SVID(es[n-1].ID); !ok {
		t.Fatal("the newest unmatched SVID was dropped")
	}
	if _, ok := c.X509SVID(es[n-bound-1].ID); ok {
		t.Fatal("an SVID past the bound was kept")
	}
	if _, ok := c.X509SVID(es[n-bound].ID); !ok {
		t.Fatal("the oldest SVID within the bound was dropped")
	}
	extra := newEntry(t, "/svc/extra", "unix:uid:99999")
	c.Apply(svidcache.Update{Entries: []*entry.Entry{extra}})
	if err := c.SetX509SVID(ca.svid(t, extra, t0, time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.X509SVID(es[n-bound].ID); !ok {
		t.Fatal("a recently read SVID was dropped before older ones")
	}
	if _, ok := c.X509SVID(es[n-bound+1].ID); ok {
		t.Fatal("the least recently used SVID was kept")
	}

	// When the subscription ends, its SVIDs become unmatched: the bound
	// holds again.
	sub.Close()
	if st := c.Stats(); st.UnmatchedX509SVIDs != bound || st.X509SVIDs != bound {
		t.Fatalf("after the subscription closed: %+v", st)
	}
	if got := c.Room(); got != 0 {
		t.Fatalf("Room = %d with the bound reached", got)
	}
}

// TestSubscriptionWantsUnsignedEntries: subscribing to a selector set
// that matches entries without an SVID reports them by Wanted, once; an
// SVID for them is kept beyond the bound.
func TestSubscriptionWantsUnsignedEntries(t *testing.T) {
	clk := fakeclock.New(t0)
	ca := newTestCA(t, t0)
	c := boundedCache(t, clk, 1)
	a := newEntry(t, "/a", "unix:uid:1")
	b := newEntry(t, "/b", "unix:uid:1", "unix:gid:5")
	other := newEntry(t, "/other", "unix:uid:2")
	res := c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{a, b, other}, Bundle: ca.bundle})
	if len(res.Sign) != 0 || len(res.Backlog) != 3 {
		t.Fatalf("first full update: %+v", res)
	}
	select {
	case <-c.Wanted():
		t.Fatal("wanted before any subscription")
	default:
	}
	sub := c.Subscribe(sels(t, "unix:uid:1", "unix:gid:5"))
	defer sub.Close()
	select {
	case <-c.Wanted():
	default:
		t.Fatal("no signal on Wanted after subscribing")
	}
	got := c.TakeWanted()
	slices.Sort(got)
	want := []string{a.ID, b.ID}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("TakeWanted = %v, want %v", got, want)
	}
	if again := c.TakeWanted(); len(again) != 0 {
		t.Fatalf("TakeWanted again = %v", again)
	}
	for _, e := range []*entry.Entry{a, b, other} {
		if err := c.SetX509SVID(ca.svid(t, e, t0, time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(sub.State().X509SVIDs); got != 2 {
		t.Fatalf("subscriber sees %d SVIDs, want 2 (bound 1 applies only to unmatched)", got)
	}
	if !c.Holds(a.ID) || !c.Holds(other.ID) {
		t.Fatal("Holds is false for a held SVID")
	}
	// A changed entry a subscription matches is signed first.
	changed := a.Clone()
	changed.DNSNames = []string{"a.example.org"}
	if res := c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{changed, b, other}}); !slices.Equal(res.Sign, []string{a.ID}) {
		t.Fatalf("changed wanted entry: %+v", res)
	}
}
