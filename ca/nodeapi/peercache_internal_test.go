package nodeapi

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestPeerCache: a remembered chain is answered only for the very same
// certificates, and only while every certificate of the chain and every
// root is valid; the cache stays bounded.
func TestPeerCache(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	cert := func(from, to time.Duration) *x509.Certificate {
		return &x509.Certificate{NotBefore: t0.Add(from), NotAfter: t0.Add(to)}
	}
	id := spiffeid.RequireFromString("spiffe://example.org/writ/agent/a")
	leaf, inter := cert(-time.Hour, time.Hour), cert(-2*time.Hour, 30*time.Minute)
	root := cert(-time.Hour+time.Minute, 10*time.Hour)
	chain := []*x509.Certificate{leaf, inter}

	var c peerCache
	if _, ok := c.lookup(chain, t0); ok {
		t.Fatal("hit in an empty cache")
	}
	c.add(chain, []*x509.Certificate{root}, id)
	tests := []struct {
		name  string
		chain []*x509.Certificate
		at    time.Time
		hit   bool
	}{
		{name: "same chain, valid", chain: chain, at: t0, hit: true},
		{name: "same chain, at the intermediate's notAfter", chain: chain, at: t0.Add(30 * time.Minute), hit: true},
		{name: "after the intermediate's notAfter", chain: chain, at: t0.Add(30*time.Minute + time.Second)},
		{name: "before the root's notBefore", chain: chain, at: t0.Add(-time.Hour)},
		{name: "another intermediate", chain: []*x509.Certificate{leaf, cert(-2*time.Hour, 30*time.Minute)}, at: t0},
		{name: "leaf alone", chain: []*x509.Certificate{leaf}, at: t0},
		{name: "another leaf", chain: []*x509.Certificate{cert(-time.Hour, time.Hour), inter}, at: t0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := c.lookup(tt.chain, tt.at)
			if ok != tt.hit || ok && got != id {
				t.Errorf("lookup = %v, %v; want hit %v", got, ok, tt.hit)
			}
		})
	}
	for range maxVerifiedPeers + 10 {
		c.add([]*x509.Certificate{cert(-time.Hour, time.Hour)}, nil, id)
	}
	if n := len(c.m); n > maxVerifiedPeers {
		t.Errorf("cache holds %d chains, more than %d", n, maxVerifiedPeers)
	}
}
