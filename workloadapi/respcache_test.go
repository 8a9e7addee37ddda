package workloadapi

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/workloadapi/unixattest"
)

// TestX509ResponseCache: callers seeing the same SVIDs share one encoded
// response; a rotation or a new bundle makes another; responses holding
// expired SVIDs are dropped.
func TestX509ResponseCache(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
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
	svid := func(path string, ttl time.Duration) *svidcache.X509SVID {
		key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509ca.SignX509SVID(clk.Now(), iss, x509ca.SVIDParams{ID: spiffeid.RequireFromPath(td, path), TTL: ttl, PublicKey: key.Public()})
		if err != nil {
			t.Fatal(err)
		}
		s, err := svidcache.NewX509SVID("e"+path, [][]byte{der}, key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	cache, err := svidcache.New(svidcache.Config{TrustDomain: td, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{SocketPath: "/tmp/unused", Cache: cache, Attestor: unixattest.New(unixattest.Config{}), TrustDomain: td, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	b1 := spiffebundle.FromX509Authorities(td, []*x509.Certificate{caCert})
	br1, err := s.bundleFor(b1)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := s.bundleFor(b1); again != br1 {
		t.Error("bundle responses not shared")
	}

	a, b := svid("/a", 10*time.Minute), svid("/b", time.Hour)
	r1, err := s.x509Response([]*svidcache.X509SVID{a, b}, br1, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Another caller's slice with the same SVIDs gets the same bytes.
	if r2, _ := s.x509Response([]*svidcache.X509SVID{a, b}, br1, nil); r2 != r1 {
		t.Error("response not shared")
	}
	var msg workload.X509SVIDResponse
	if err := proto.Unmarshal(r1.msg.b, &msg); err != nil {
		t.Fatal(err)
	}
	if len(msg.Svids) != 2 || msg.Svids[0].SpiffeId != "spiffe://example.org/a" || string(msg.Svids[1].Bundle) != string(caCert.Raw) {
		t.Fatalf("response %v", &msg)
	}
	if r, _ := s.x509Response([]*svidcache.X509SVID{b, a}, br1, nil); r == r1 {
		t.Error("another order shares the response")
	}
	if r, _ := s.x509Response([]*svidcache.X509SVID{a}, br1, nil); r == r1 {
		t.Error("a subset shares the response")
	}

	// A new bundle: new responses, the old ones forgotten.
	b2 := b1.Clone()
	br2, err := s.bundleFor(b2)
	if err != nil || br2 == br1 {
		t.Fatalf("new bundle: %v", err)
	}
	r3, _ := s.x509Response([]*svidcache.X509SVID{a, b}, br2, nil)
	if r3 == r1 || len(s.x509.m) != 1 {
		t.Errorf("after a bundle change: %d responses kept", len(s.x509.m))
	}

	// After a's expiry (and the sweep interval), responses holding it go
	// with the next insertion.
	clk.Advance(11 * time.Minute)
	b2svid := svid("/b", time.Hour)
	if _, err := s.x509Response([]*svidcache.X509SVID{b2svid}, br2, nil); err != nil {
		t.Fatal(err)
	}
	for _, rs := range s.x509.m {
		for _, r := range rs {
			for _, sv := range r.svids {
				if sv == a {
					t.Error("a response with an expired SVID is kept")
				}
			}
		}
	}
	if s.x509.size != len(s.x509.m[x509Key{b2svid, 1}][0].msg.b) {
		t.Errorf("size %d not accounted", s.x509.size)
	}
}
