package workloadapi

import (
	"crypto/x509"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/workloadapi/unixattest"
)

// TestX509ResponseFollowsEntitlement: with many entries for other
// workloads on the cache, a change to another workload's entries or SVIDs
// leaves a caller's encoded response as it is (the same bytes, not built
// again), while a change to what the caller matches (a rotated SVID, a
// removed or a new entry) never serves the old response.
func TestX509ResponseFollowsEntitlement(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	agentID := spiffeid.RequireFromPath(td, "/agent")
	now := time.Now()
	clk := fakeclock.New(now)
	caKey, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509ca.NewSelfSignedCA(now.Add(-time.Minute), td, caKey, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	iss := &x509ca.Issuer{Cert: caCert, Signer: caKey}
	newEntry := func(path, sel string) *entry.Entry {
		s, err := entry.ParseSelector(sel)
		if err != nil {
			t.Fatal(err)
		}
		e := &entry.Entry{ID: entry.NewID(), SPIFFEID: spiffeid.RequireFromPath(td, path), ParentID: agentID, Selectors: []entry.Selector{s}}
		e.Normalize()
		if err := e.Validate(td); err != nil {
			t.Fatal(err)
		}
		return e
	}
	sign := func(e *entry.Entry) *svidcache.X509SVID {
		key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509ca.SignX509SVID(clk.Now(), iss, x509ca.SVIDParams{ID: e.SPIFFEID, TTL: time.Hour, PublicKey: key.Public()})
		if err != nil {
			t.Fatal(err)
		}
		s, err := svidcache.NewX509SVID(e.ID, [][]byte{der}, key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	cache, err := svidcache.New(svidcache.Config{TrustDomain: td, Clock: clk, MaxX509SVIDs: 1000})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{SocketPath: "/tmp/unused", Cache: cache, Attestor: unixattest.New(unixattest.Config{}), TrustDomain: td, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}

	mine := []*entry.Entry{newEntry("/me/a", "unix:uid:1000"), newEntry("/me/b", "unix:uid:1000")}
	var others []*entry.Entry
	for i := range 200 {
		others = append(others, newEntry(fmt.Sprintf("/other/w%d", i), "unix:uid:2000"))
	}
	bundle := spiffebundle.FromX509Authorities(td, []*x509.Certificate{caCert})
	cache.Apply(svidcache.Update{Full: true, Entries: append(slices.Clone(mine), others...), Bundle: bundle})
	for _, e := range append(slices.Clone(mine), others...) {
		if err := cache.SetX509SVID(sign(e)); err != nil {
			t.Fatal(err)
		}
	}
	sub := cache.Subscribe([]entry.Selector{{Type: "unix", Value: "uid:1000"}})
	defer sub.Close()
	response := func() *x509Resp {
		t.Helper()
		st := sub.State()
		br, err := s.bundleFor(st.Bundle)
		if err != nil {
			t.Fatal(err)
		}
		r, err := s.x509Response(st.X509SVIDs, br, st.Federated)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	ids := func(r *x509Resp) []string {
		var out []string
		for _, sv := range r.svids {
			out = append(out, sv.ID.Path())
		}
		return out
	}
	r1 := response()
	if got := ids(r1); !slices.Equal(got, []string{"/me/a", "/me/b"}) {
		t.Fatalf("response holds %v", got)
	}

	// Other workloads: a rotated SVID, a changed entry, a removed one and
	// a new one. The caller's response is the same object.
	if err := cache.SetX509SVID(sign(others[0])); err != nil {
		t.Fatal(err)
	}
	changed := others[1].Clone()
	changed.DNSNames = []string{"other.example.org"}
	extra := newEntry("/other/new", "unix:uid:2000")
	cache.Apply(svidcache.Update{Entries: []*entry.Entry{changed, extra}, Deleted: []string{others[2].ID}})
	if r := response(); r != r1 {
		t.Fatalf("a change for other workloads made a new response for this caller: %v", ids(r))
	}

	// The caller's own SVID rotates: a new response with the new SVID.
	rotated := sign(mine[1])
	if err := cache.SetX509SVID(rotated); err != nil {
		t.Fatal(err)
	}
	r2 := response()
	if r2 == r1 || r2.svids[1] != rotated {
		t.Fatal("the old response was served after the caller's SVID rotated")
	}

	// The caller's entry goes: its SVID leaves the response.
	cache.Apply(svidcache.Update{Deleted: []string{mine[0].ID}})
	r3 := response()
	if got := ids(r3); r3 == r2 || !slices.Equal(got, []string{"/me/b"}) {
		t.Fatalf("after removing an entry of the caller, the response holds %v", got)
	}

	// A new entry for the caller, once signed, joins the response.
	more := newEntry("/me/c", "unix:uid:1000")
	cache.Apply(svidcache.Update{Entries: []*entry.Entry{more}})
	if err := cache.SetX509SVID(sign(more)); err != nil {
		t.Fatal(err)
	}
	if got := ids(response()); !slices.Equal(got, []string{"/me/b", "/me/c"}) {
		t.Fatalf("after a new entry for the caller, the response holds %v", got)
	}
}
