package svidcache_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/entry"
)

func TestMatchSubset(t *testing.T) {
	clk := fakeclock.New(t0)
	ca := newTestCA(t, t0)
	c := newCache(t, clk, nil)
	eUID := newEntry(t, "/uid", "unix:uid:1000")
	eUIDPath := newEntry(t, "/uid-path", "unix:uid:1000", "unix:path:/bin/app")
	eGID := newEntry(t, "/gid", "unix:gid:50")
	eK8s := newEntry(t, "/k8s", "k8s:ns:prod", "k8s:sa:web")
	all := []*entry.Entry{eUID, eUIDPath, eGID, eK8s}
	c.Apply(svidcache.Update{Full: true, Entries: all, Bundle: ca.bundle})
	for _, e := range all {
		if err := c.SetX509SVID(ca.svid(t, e, t0, time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name     string
		workload []string
		want     []*entry.Entry
	}{
		{"no selectors", nil, nil},
		{"exact single", []string{"unix:uid:1000"}, []*entry.Entry{eUID}},
		{"superset gets both", []string{"unix:uid:1000", "unix:path:/bin/app", "unix:gid:7"}, []*entry.Entry{eUID, eUIDPath}},
		{"unsorted input", []string{"unix:path:/bin/app", "unix:gid:50", "unix:uid:1000"}, []*entry.Entry{eGID, eUID, eUIDPath}},
		{"duplicates in input", []string{"unix:uid:1000", "unix:uid:1000"}, []*entry.Entry{eUID}},
		{"partial match is no match", []string{"k8s:ns:prod"}, nil},
		{"all of a multi-selector entry", []string{"k8s:sa:web", "k8s:ns:prod"}, []*entry.Entry{eK8s}},
		{"other value", []string{"unix:uid:1001"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ids(c.X509SVIDs(sels(t, tc.workload...)))
			var want []string
			for _, e := range tc.want {
				want = append(want, e.ID)
			}
			if len(got) == 0 && len(want) == 0 {
				return
			}
			if !slices.Equal(got, want) {
				t.Fatalf("got %v, want %v", got, want)
			}
			// The memoized answer is the same.
			if again := ids(c.X509SVIDs(sels(t, tc.workload...))); !slices.Equal(again, got) {
				t.Fatalf("second lookup %v, first %v", again, got)
			}
			idents := c.Identities(sels(t, tc.workload...))
			if len(idents) != len(want) {
				t.Fatalf("Identities = %v", idents)
			}
		})
	}
}

func TestStableOrder(t *testing.T) {
	clk := fakeclock.New(t0)
	ca := newTestCA(t, t0)
	c := newCache(t, clk, nil)
	var es []*entry.Entry
	for _, p := range []string{"/z", "/a", "/m", "/a", "/b/c", "/a"} {
		es = append(es, newEntry(t, p, "unix:uid:0"))
	}
	c.Apply(svidcache.Update{Full: true, Entries: es})
	for _, e := range es {
		if err := c.SetX509SVID(ca.svid(t, e, t0, time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	want := slices.Clone(es)
	slices.SortFunc(want, func(a, b *entry.Entry) int {
		if c := cmpString(a.SPIFFEID.String(), b.SPIFFEID.String()); c != 0 {
			return c
		}
		return cmpString(a.ID, b.ID)
	})
	var wantIDs []string
	for _, e := range want {
		wantIDs = append(wantIDs, e.ID)
	}
	for range 5 {
		if got := ids(c.X509SVIDs(sels(t, "unix:uid:0"))); !slices.Equal(got, wantIDs) {
			t.Fatalf("order %v, want %v", got, wantIDs)
		}
		c.Apply(svidcache.Update{Entries: []*entry.Entry{es[0].Clone()}}) // invalidates the memo
	}
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func TestExpiredNeverReturned(t *testing.T) {
	clk := fakeclock.New(t0)
	ca := newTestCA(t, t0)
	c := newCache(t, clk, nil)
	e := newEntry(t, "/w", "unix:uid:1")
	c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{e}})
	s := ca.svid(t, e, t0, time.Hour)
	if err := c.SetX509SVID(s); err != nil {
		t.Fatal(err)
	}
	sub := c.Subscribe(sels(t, "unix:uid:1"))
	defer sub.Close()
	select {
	case <-sub.Changed():
	default:
	}

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	clk.Set(s.NotAfter.Add(-time.Nanosecond))
	if got := c.X509SVIDs(sels(t, "unix:uid:1")); len(got) != 1 {
		t.Fatalf("just before expiry: %d SVIDs", len(got))
	}
	if _, ok := c.X509SVID(e.ID); !ok {
		t.Fatal("X509SVID: not found before expiry")
	}
	if err := clk.WaitForTimers(ctx, 1); err != nil {
		t.Fatal(err)
	}
	clk.Set(s.NotAfter)
	// Reads filter by the clock, whether or not Run has dropped it yet.
	if got := c.X509SVIDs(sels(t, "unix:uid:1")); len(got) != 0 {
		t.Fatalf("at NotAfter: %d SVIDs", len(got))
	}
	if got := sub.State().X509SVIDs; len(got) != 0 {
		t.Fatalf("subscription at NotAfter: %d SVIDs", len(got))
	}
	if _, ok := c.X509SVID(e.ID); ok {
		t.Fatal("X509SVID returned an expired SVID")
	}
	// Run drops it and wakes the subscriber.
	select {
	case <-sub.Changed():
	case <-time.After(5 * time.Second):
		t.Fatal("subscriber not told of the expiry")
	}
	waitFor(t, func() bool { return c.Stats().X509SVIDs == 0 })
	// An expired SVID is refused.
	if err := c.SetX509SVID(s); !errors.Is(err, svidcache.ErrExpired) {
		t.Fatalf("SetX509SVID(expired) = %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestSubscriptionsCoalesceAndNeverBlock(t *testing.T) {
	clk := fakeclock.New(t0)
	ca := newTestCA(t, t0)
	c := newCache(t, clk, nil)
	e := newEntry(t, "/w", "unix:uid:1")
	c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{e}})

	slow := c.Subscribe(sels(t, "unix:uid:1")) // never read until the end
	defer slow.Close()
	fast := c.Subscribe(sels(t, "unix:uid:1", "unix:gid:2"))
	defer fast.Close()
	other := c.Subscribe(sels(t, "unix:uid:2")) // matches nothing that changes
	defer other.Close()

	var last *svidcache.X509SVID
	got := make(chan int, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		n := 0
		for {
			select {
			case <-fast.Changed():
				n++
				if st := fast.State(); len(st.X509SVIDs) == 1 && st.X509SVIDs[0].NotAfter.Equal(t0.Add(100*time.Minute)) {
					got <- n
					return
				}
			case <-time.After(10 * time.Second):
				got <- -1
				return
			}
		}
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; i <= 100; i++ {
			last = ca.svid(t, e, t0, time.Duration(i)*time.Minute)
			if err := c.SetX509SVID(last); err != nil {
				t.Error(err)
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("producer blocked by a subscriber that does not read")
	}
	wg.Wait()
	if n := <-got; n < 1 {
		t.Fatal("fast subscriber did not see the latest state")
	}
	// The slow one has exactly one pending signal, and reads the latest.
	select {
	case <-slow.Changed():
	default:
		t.Fatal("slow subscriber has no signal")
	}
	select {
	case <-slow.Changed():
		t.Fatal("signals did not coalesce")
	default:
	}
	if st := slow.State(); len(st.X509SVIDs) != 1 || st.X509SVIDs[0] != last {
		t.Fatalf("slow subscriber state %v, want the latest SVID", ids(st.X509SVIDs))
	}
	select {
	case <-other.Changed():
		t.Fatal("unrelated subscriber woken by another entry's SVID")
	default:
	}

	// A bundle change wakes everyone, including bundle-only subscribers.
	bundleOnly := c.Subscribe(nil)
	defer bundleOnly.Close()
	c.Apply(svidcache.Update{Bundle: ca.bundle})
	for name, s := range map[string]*svidcache.Subscription{"other": other, "bundle-only": bundleOnly} {
		select {
		case <-s.Changed():
		default:
			t.Fatalf("%s not woken by a bundle change", name)
		}
		if s.State().Bundle != ca.bundle {
			t.Fatalf("%s: bundle not in state", name)
		}
	}
	// Closed subscriptions are idempotent and empty.
	other.Close()
	other.Close()
	if st := other.State(); st.Bundle != nil || st.X509SVIDs != nil {
		t.Fatal("closed subscription has state")
	}
	if n := c.Stats().Subscriptions; n != 3 {
		t.Fatalf("Subscriptions = %d, want 3", n)
	}
}

func TestEntryChanges(t *testing.T) {
	clk := fakeclock.New(t0)
	ca := newTestCA(t, t0)
	c := newCache(t, clk, nil)
	e := newEntry(t, "/w", "unix:uid:1")
	// New in a full update: backlog; new in a delta: before the backlog.
	res := c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{e}})
	if len(res.Sign) != 0 || !slices.Equal(res.Backlog, []string{e.ID}) {
		t.Fatalf("new entry in a full update: %+v", res)
	}
	res = c.Apply(svidcache.Update{Full: true})
	res = c.Apply(svidcache.Update{Entries: []*entry.Entry{e}})
	if len(res.Sign) != 0 || !slices.Equal(res.New, []string{e.ID}) {
		t.Fatalf("new entry in a delta: %+v", res)
	}
	if err := c.SetX509SVID(ca.svid(t, e, t0, time.Hour)); err != nil {
		t.Fatal(err)
	}
	sub := c.Subscribe(sels(t, "unix:uid:1", "unix:uid:2"))
	defer sub.Close()

	// Unchanged: nothing to sign.
	if res := c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{e.Clone()}}); len(res.Sign)+len(res.Removed) != 0 {
		t.Fatalf("unchanged entry: %+v", res)
	}
	// Selectors change: the SVID stays, membership follows.
	moved := e.Clone()
	moved.Selectors = sels(t, "unix:uid:2")
	if res := c.Apply(svidcache.Update{Entries: []*entry.Entry{moved}}); len(res.Sign) != 0 {
		t.Fatalf("selector change: %+v", res)
	}
	if len(c.X509SVIDs(sels(t, "unix:uid:1"))) != 0 || len(c.X509SVIDs(sels(t, "unix:uid:2"))) != 1 {
		t.Fatal("selector change not reflected")
	}
	// TTL change: re-sign, keep serving the old one meanwhile.
	ttl := moved.Clone()
	ttl.X509SVIDTTL = 2 * time.Hour
	if res := c.Apply(svidcache.Update{Entries: []*entry.Entry{ttl}}); !slices.Equal(res.Sign, []string{e.ID}) {
		t.Fatalf("TTL change: %+v", res)
	}
	if len(c.X509SVIDs(sels(t, "unix:uid:2"))) != 1 {
		t.Fatal("TTL change dropped the SVID")
	}
	// SPIFFE ID change: the old SVID goes at once; a late SVID for the
	// old ID is refused.
	renamed := ttl.Clone()
	renamed.SPIFFEID = spiffeid.RequireFromPath(td, "/renamed")
	old := ca.svid(t, ttl, t0, time.Hour)
	if res := c.Apply(svidcache.Update{Entries: []*entry.Entry{renamed}}); !slices.Equal(res.Sign, []string{e.ID}) {
		t.Fatalf("ID change: %+v", res)
	}
	if n := len(c.X509SVIDs(sels(t, "unix:uid:2"))); n != 0 {
		t.Fatal("old identity still served after SPIFFE ID change")
	}
	if err := c.SetX509SVID(old); !errors.Is(err, svidcache.ErrStale) {
		t.Fatalf("stale SVID: %v", err)
	}
	// DNS names added: re-sign, and keep serving the old SVID, which
	// names nothing the entry does not grant, until the new one is set.
	if err := c.SetX509SVID(ca.svid(t, renamed, t0, time.Hour)); err != nil {
		t.Fatal(err)
	}
	dns := renamed.Clone()
	dns.DNSNames = []string{"w.example.org", "v.example.org"}
	if res := c.Apply(svidcache.Update{Entries: []*entry.Entry{dns}}); !slices.Equal(res.Sign, []string{e.ID}) {
		t.Fatalf("DNS names added: %+v", res)
	}
	if got := c.X509SVIDs(sels(t, "unix:uid:2")); len(got) != 1 || len(got[0].DNSNames()) != 0 {
		t.Fatal("DNS names added: the old SVID is not served meanwhile")
	}
	if err := c.SetX509SVID(ca.svid(t, renamed, t0, time.Hour)); !errors.Is(err, svidcache.ErrStale) {
		t.Fatalf("SVID without the added names: %v", err)
	}
	if err := c.SetX509SVID(ca.svid(t, dns, t0, time.Hour)); err != nil {
		t.Fatal(err)
	}
	// Reordered: the same names, kept meanwhile.
	reordered := dns.Clone()
	reordered.DNSNames = []string{"v.example.org", "w.example.org"}
	if res := c.Apply(svidcache.Update{Entries: []*entry.Entry{reordered}}); !slices.Equal(res.Sign, []string{e.ID}) || len(c.X509SVIDs(sels(t, "unix:uid:2"))) != 1 {
		t.Fatalf("DNS names reordered: %+v", res)
	}
	// A name removed: the SVID naming it goes at once.
	dns = reordered.Clone()
	dns.DNSNames = []string{"w.example.org"}
	if res := c.Apply(svidcache.Update{Entries: []*entry.Entry{dns}}); !slices.Equal(res.Sign, []string{e.ID}) {
		t.Fatalf("DNS name removed: %+v", res)
	}
	if n := len(c.X509SVIDs(sels(t, "unix:uid:2"))); n != 0 {
		t.Fatal("SVID naming a removed DNS name still served")
	}
	if err := c.SetX509SVID(ca.svid(t, dns, t0, time.Hour)); err != nil {
		t.Fatal(err)
	}
	// Delete, and a full set without it, remove it.
	if res := c.Apply(svidcache.Update{Deleted: []string{e.ID}}); !slices.Equal(res.Removed, []string{e.ID}) {
		t.Fatalf("delete: %+v", res)
	}
	if err := c.SetX509SVID(ca.svid(t, dns, t0, time.Hour)); !errors.Is(err, svidcache.ErrUnknownEntry) {
		t.Fatalf("SVID for removed entry: %v", err)
	}
	e2 := newEntry(t, "/w2", "unix:uid:2")
	c.Apply(svidcache.Update{Entries: []*entry.Entry{e2}})
	if res := c.Apply(svidcache.Update{Full: true}); !slices.Equal(res.Removed, []string{e2.ID}) {
		t.Fatalf("empty full set: %+v", res)
	}
	if st := c.Stats(); st.Entries != 0 || st.X509SVIDs != 0 {
		t.Fatalf("stats after removing all: %+v", st)
	}
}

func TestSetX509SVIDChecksKey(t *testing.T) {
	ca := newTestCA(t, t0)
	e := newEntry(t, "/w", "unix:uid:1")
	s := ca.svid(t, e, t0, time.Hour)
	other := ca.svid(t, e, t0, time.Hour)
	otherKey, err := other.Signer()
	if err != nil {
		t.Fatal(err)
	}
	key, err := s.Signer()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svidcache.NewX509SVID(e.ID, [][]byte{s.LeafDER()}, otherKey); !errors.Is(err, svidcache.ErrInvalidSVID) {
		t.Fatalf("mismatched key: %v", err)
	}
	if _, err := svidcache.NewX509SVID(e.ID, [][]byte{[]byte("junk")}, key); !errors.Is(err, svidcache.ErrInvalidSVID) {
		t.Fatalf("junk chain: %v", err)
	}
	// The key Signer returns is the leaf's.
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil || !bytes.Equal(pub, s.Leaf().RawSubjectPublicKeyInfo) {
		t.Fatalf("Signer's key is not the leaf's: %v", err)
	}
	if len(s.PrivateKeyDER) == 0 || len(s.ChainDER) != len(s.Certificates()[0].Raw) {
		t.Fatal("precomputed DER missing")
	}
	if leaf := s.Leaf(); leaf.NotAfter != s.NotAfter || len(s.Certificates()) != 1 {
		t.Fatal("parsed chain differs")
	}
}

func TestManyGroupsBounded(t *testing.T) {
	clk := fakeclock.New(t0)
	c := newCache(t, clk, nil)
	for i := range 5000 {
		c.X509SVIDs(sels(t, fmt.Sprintf("unix:uid:%d", i)))
	}
	if n := c.Stats().Groups; n > 1100 {
		t.Fatalf("%d memoized groups; want them bounded", n)
	}
}

// TestFullSetInParts: a full set applied in parts (Update.More) upserts
// each part at once and removes the entries in none of the parts only
// when the last part is applied; a later full set in one piece is not
// mixed with it.
func TestFullSetInParts(t *testing.T) {
	c, err := svidcache.New(svidcache.Config{TrustDomain: td, Clock: fakeclock.New(t0)})
	if err != nil {
		t.Fatal(err)
	}
	old := newEntry(t, "/old", "unix:uid:1")
	kept := newEntry(t, "/kept", "unix:uid:2")
	c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{old, kept}})

	a := newEntry(t, "/a", "unix:uid:3")
	b := newEntry(t, "/b", "unix:uid:4")
	res := c.Apply(svidcache.Update{Full: true, More: true, Entries: []*entry.Entry{a, kept.Clone()}})
	if !slices.Equal(res.Backlog, []string{a.ID, kept.ID}) || len(res.New) != 0 || len(res.Removed) != 0 {
		t.Fatalf("first part: %+v", res)
	}
	if _, ok := c.Entry(old.ID); !ok {
		t.Fatal("an entry was removed before the last part")
	}
	if _, ok := c.Entry(a.ID); !ok {
		t.Fatal("an entry of the first part is not applied at once")
	}
	res = c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{b}})
	if !slices.Equal(res.Removed, []string{old.ID}) || !slices.Equal(res.Backlog, []string{b.ID}) {
		t.Fatalf("last part: %+v", res)
	}
	for _, e := range []*entry.Entry{a, b, kept} {
		if _, ok := c.Entry(e.ID); !ok {
			t.Fatalf("entry %s of the set is missing", e.SPIFFEID)
		}
	}
	// The next full set, in one piece, replaces it all.
	res = c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{b}})
	slices.Sort(res.Removed)
	want := []string{a.ID, kept.ID}
	slices.Sort(want)
	if !slices.Equal(res.Removed, want) {
		t.Fatalf("next full set removed %v, want %v", res.Removed, want)
	}
	if got := c.Stats().Entries; got != 1 {
		t.Fatalf("%d entries, want 1", got)
	}
}
