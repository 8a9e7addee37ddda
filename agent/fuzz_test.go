package agent

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	nodev1 "writ.dev/writ/ca/api/node/v1"
)

// FuzzParseEntry: the wire entry parser never panics, and what it accepts
// is a valid entry with sorted selectors.
func FuzzParseEntry(f *testing.F) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	parent := spiffeid.RequireFromPath(td, "/agent/node1")
	for _, seed := range []struct {
		id, sid, sel, dns string
		ttl               int64
	}{
		{"0b0f0e2c-9d1a-4f5e-8a2b-3c4d5e6f7a8b", "spiffe://example.org/web", "unix:uid:1000", "", 3600},
		{"0b0f0e2c-9d1a-4f5e-8a2b-3c4d5e6f7a8b", "spiffe://example.org/web", "unix:uid:01", "", 3600},
		{"0b0f0e2c-9d1a-4f5e-8a2b-3c4d5e6f7a8b", "spiffe://other.org/web", "k8s:ns:prod", "web.example.org", 0},
		{"not-an-id", "spiffe://example.org/a/../b", "unix:path:/bin/x", "*.example.org", -1},
		{"0b0f0e2c-9d1a-4f5e-8a2b-3c4d5e6f7a8b", "spiffe://example.org/agent/node1", "a:b", "UPPER.org", 1 << 62},
	} {
		f.Add(seed.id, seed.sid, seed.sel, seed.dns, seed.ttl)
	}
	f.Fuzz(func(t *testing.T, id, sid, sel, dns string, ttl int64) {
		w := &nodev1.Entry{Id: id, SpiffeId: sid, Selectors: []string{sel, sel + "x"}, X509SvidTtl: ttl, JwtSvidTtl: ttl}
		if dns != "" {
			w.DnsNames = []string{dns}
		}
		e, err := parseEntry(td, parent, w)
		if err != nil {
			return
		}
		if err := e.Validate(td); err != nil {
			t.Fatalf("accepted an invalid entry: %v", err)
		}
		if e.ID != id || e.SPIFFEID.String() != sid {
			t.Fatal("fields changed")
		}
	})
}
