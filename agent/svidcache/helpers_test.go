package svidcache_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/jwtsvid"
	"writ.dev/writ/ca/x509ca"
)

var (
	td    = spiffeid.RequireTrustDomainFromString("example.org")
	agent = spiffeid.RequireFromPath(td, "/agent/node1")
	t0    = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
)

// testCA mints SVIDs and JWT-SVIDs at runtime.
type testCA struct {
	iss    *x509ca.Issuer
	jwtKey jwtsvid.Key
	bundle *spiffebundle.Bundle
}

func newTestCA(t testing.TB, now time.Time) *testCA {
	t.Helper()
	key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509ca.NewSelfSignedCA(now, td, key, 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	jk, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	b := spiffebundle.FromX509Authorities(td, []*x509.Certificate{cert})
	if err := b.AddJWTAuthority("k1", jk.Public()); err != nil {
		t.Fatal(err)
	}
	return &testCA{iss: &x509ca.Issuer{Cert: cert, Signer: key}, jwtKey: jwtsvid.Key{ID: "k1", Signer: jk}, bundle: b}
}

// svid signs an X.509-SVID for e at now with the given lifetime.
func (ca *testCA) svid(t testing.TB, e *entry.Entry, now time.Time, ttl time.Duration) *svidcache.X509SVID {
	t.Helper()
	key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	return ca.svidWithKey(t, e, now, ttl, key)
}

func (ca *testCA) svidWithKey(t testing.TB, e *entry.Entry, now time.Time, ttl time.Duration, key crypto.Signer) *svidcache.X509SVID {
	t.Helper()
	der, err := x509ca.SignX509SVID(now, ca.iss, x509ca.SVIDParams{ID: e.SPIFFEID, DNSNames: e.DNSNames, TTL: ttl, PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	s, err := svidcache.NewX509SVID(e.ID, [][]byte{der}, key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// newEntry returns a valid entry for path with selectors ("type:value").
func newEntry(t testing.TB, path string, selectors ...string) *entry.Entry {
	t.Helper()
	e := &entry.Entry{ID: entry.NewID(), SPIFFEID: spiffeid.RequireFromPath(td, path), ParentID: agent}
	for _, s := range selectors {
		sel, err := entry.ParseSelector(s)
		if err != nil {
			t.Fatal(err)
		}
		e.Selectors = append(e.Selectors, sel)
	}
	e.Normalize()
	if err := e.Validate(td); err != nil {
		t.Fatal(err)
	}
	return e
}

func sels(t testing.TB, ss ...string) []entry.Selector {
	t.Helper()
	out := make([]entry.Selector, len(ss))
	for i, s := range ss {
		var err error
		if out[i], err = entry.ParseSelector(s); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func newCache(t testing.TB, clk *fakeclock.Clock, signer svidcache.JWTSigner) *svidcache.Cache {
	t.Helper()
	c, err := svidcache.New(svidcache.Config{TrustDomain: td, Clock: clk, JWTSigner: signer})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ids(svids []*svidcache.X509SVID) []string {
	out := make([]string, len(svids))
	for i, s := range svids {
		out[i] = s.EntryID
	}
	return out
}

// jwtSigner signs real JWT-SVIDs with the test CA's key and counts calls.
type jwtSigner struct {
	ca    *testCA
	clk   *fakeclock.Clock
	ttl   time.Duration
	calls atomic.Int32
	mu    sync.Mutex // guards ids, err, gate
	ids   map[string]spiffeid.ID
	err   error
	gate  chan struct{} // when set, calls wait for it to close
}

func (s *jwtSigner) SignJWTSVID(ctx context.Context, entryID string, audience []string) (string, error) {
	s.calls.Add(1)
	s.mu.Lock()
	id, err, gate := s.ids[entryID], s.err, s.gate
	s.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	if err != nil {
		return "", err
	}
	tok, _, err := jwtsvid.Sign(s.clk.Now(), s.ca.jwtKey, id, audience, s.ttl, s.clk.Now().Add(24*time.Hour))
	return tok, err
}
