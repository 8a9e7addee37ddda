package svidcache_test

import (
	"encoding/hex"
	"errors"
	"slices"
	"testing"
	"time"

	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/entry"
)

func TestX509SVIDAuthorityID(t *testing.T) {
	ca := newTestCA(t, t0)
	e := newEntry(t, "/w", "unix:uid:1")
	s := ca.svid(t, e, t0, time.Hour)
	if want := hex.EncodeToString(ca.iss.Cert.SubjectKeyId); s.AuthorityID != want || want == "" {
		t.Fatalf("AuthorityID = %q, want the CA's subject key ID %q", s.AuthorityID, want)
	}
}

func TestTaintReportsSVIDsOfTaintedCAs(t *testing.T) {
	clk := fakeclock.New(t0)
	oldCA, newCA := newTestCA(t, t0), newTestCA(t, t0)
	a := newEntry(t, "/a", "unix:uid:1")
	b := newEntry(t, "/b", "unix:uid:1")
	unsigned := newEntry(t, "/c", "unix:uid:1")
	c := newCache(t, clk, nil)
	c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{a, b, unsigned}, Bundle: oldCA.bundle})
	for _, s := range []*svidcache.X509SVID{oldCA.svid(t, a, t0, time.Hour), newCA.svid(t, b, t0, time.Hour)} {
		if err := c.SetX509SVID(s); err != nil {
			t.Fatal(err)
		}
	}
	oldID := hex.EncodeToString(oldCA.iss.Cert.SubjectKeyId)
	newID := hex.EncodeToString(newCA.iss.Cert.SubjectKeyId)

	if got := c.Taint(nil, nil); len(got) != 0 || c.TaintedAuthority(oldID) {
		t.Fatalf("nothing tainted: re-sign %v", got)
	}
	got := c.Taint([]string{oldID, "00ff"}, nil)
	if !slices.Equal(got, []string{a.ID}) {
		t.Fatalf("re-sign %v, want only %s (signed by the tainted CA)", got, a.ID)
	}
	if !c.TaintedAuthority(oldID) || c.TaintedAuthority(newID) || c.TaintedAuthority("") {
		t.Fatal("TaintedAuthority wrong")
	}
	// Still served until replaced.
	if _, ok := c.X509SVID(a.ID); !ok {
		t.Fatal("the SVID of a tainted CA was dropped before its replacement came")
	}
	if err := c.SetX509SVID(newCA.svid(t, a, t0, time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got := c.Taint([]string{oldID}, nil); len(got) != 0 {
		t.Fatalf("re-sign %v after replacement, want none", got)
	}
	// A new set replaces the old one.
	c.Taint([]string{newID}, nil)
	if c.TaintedAuthority(oldID) || !c.TaintedAuthority(newID) {
		t.Fatal("the tainted set was not replaced")
	}
}

func TestTaintDropsJWTSVIDsOfTaintedKeys(t *testing.T) {
	c, _, s, e := jwtSetup(t)
	ctx := t.Context()
	first, err := c.FetchJWTSVID(ctx, e.ID, []string{"a"})
	if err != nil {
		t.Fatal(err)
	}
	if first.KeyID != "k1" {
		t.Fatalf("KeyID = %q, want k1", first.KeyID)
	}
	// Another key tainted: kept.
	c.Taint(nil, []string{"other"})
	if j, err := c.FetchJWTSVID(ctx, e.ID, []string{"a"}); err != nil || j != first || s.calls.Load() != 1 {
		t.Fatalf("token of an untainted key not reused: %v, calls %d", err, s.calls.Load())
	}
	c.Taint(nil, []string{"k1"})
	if n := c.Stats().JWTSVIDs; n != 0 {
		t.Fatalf("%d JWT-SVIDs cached after their key was tainted", n)
	}
	// Signed on demand; a token the signer still makes with the
	// tainted key is returned (it validates) but not cached.
	j, err := c.FetchJWTSVID(ctx, e.ID, []string{"a"})
	if err != nil || j == first || s.calls.Load() != 2 {
		t.Fatalf("not re-signed: %v, calls %d", err, s.calls.Load())
	}
	if n := c.Stats().JWTSVIDs; n != 0 {
		t.Fatalf("token of a tainted key cached (%d)", n)
	}
}

func TestSetX509SVIDsReportsEachSVID(t *testing.T) {
	clk := fakeclock.New(t0)
	ca := newTestCA(t, t0)
	a := newEntry(t, "/a", "unix:uid:1")
	b := newEntry(t, "/b", "unix:uid:1")
	gone := newEntry(t, "/gone", "unix:uid:1")
	c := newCache(t, clk, nil)
	c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{a, b}, Bundle: ca.bundle})
	sub := c.Subscribe(sels(t, "unix:uid:1"))
	defer sub.Close()

	stale := ca.svid(t, b, t0, time.Hour)
	c.Apply(svidcache.Update{Entries: []*entry.Entry{func() *entry.Entry { e := *b; e.SPIFFEID = a.SPIFFEID; return &e }()}})
	select {
	case <-sub.Changed():
	default:
	}
	errs := c.SetX509SVIDs([]*svidcache.X509SVID{ca.svid(t, a, t0, time.Hour), stale, ca.svid(t, gone, t0, time.Hour)})
	if errs[0] != nil || !errors.Is(errs[1], svidcache.ErrStale) || !errors.Is(errs[2], svidcache.ErrUnknownEntry) {
		t.Fatalf("errors %v", errs)
	}
	select {
	case <-sub.Changed():
	default:
		t.Fatal("subscription not woken")
	}
	if got := ids(sub.State().X509SVIDs); !slices.Equal(got, []string{a.ID}) {
		t.Fatalf("served %v, want only %s", got, a.ID)
	}
}
