package testca

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/x509ca"
)

// CA is a signing CA of a trust domain: self-signed, or an intermediate
// with the chain up to (not including) its root.
type CA struct {
	TD   spiffeid.TrustDomain
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	// Chain is Cert followed by the intermediates above it, without the
	// root: what a leaf it signs is sent with.
	Chain []*x509.Certificate
	// Root is the self-signed CA at the top (Cert itself for a root).
	Root *x509.Certificate
}

// NewKey returns a new ECDSA P-256 key.
func NewKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := x509ca.GenerateKey("ec-p256")
	if err != nil {
		tb.Fatal(err)
	}
	return k.(*ecdsa.PrivateKey)
}

// New returns a self-signed CA of td valid from now (backdated as
// x509ca does) for ttl.
func New(tb testing.TB, td spiffeid.TrustDomain, now time.Time, ttl time.Duration) *CA {
	tb.Helper()
	key := NewKey(tb)
	cert, err := x509ca.NewSelfSignedCA(now, td, key, ttl)
	if err != nil {
		tb.Fatal(err)
	}
	return &CA{TD: td, Cert: cert, Key: key, Root: cert}
}

// Issuer returns the CA as an x509ca.Issuer.
func (c *CA) Issuer() *x509ca.Issuer {
	return &x509ca.Issuer{Cert: c.Cert, Signer: c.Key, Chain: c.Chain}
}

// Intermediate returns a CA signed by c, valid from now for ttl (cut to
// c's validity).
func (c *CA) Intermediate(tb testing.TB, now time.Time, ttl time.Duration) *CA {
	tb.Helper()
	key := NewKey(tb)
	cert, err := x509ca.SignCA(now, c.TD, key.Public(), c.Issuer(), ttl)
	if err != nil {
		tb.Fatal(err)
	}
	chain := []*x509.Certificate{cert}
	if c.Cert != c.Root {
		chain = append(chain, c.Chain...)
	}
	return &CA{TD: c.TD, Cert: cert, Key: key, Chain: chain, Root: c.Root}
}

// Bundle returns an X.509 bundle of c's trust domain holding its root.
func (c *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(c.TD, []*x509.Certificate{c.Root})
}

// SVID is an X.509-SVID with its key.
type SVID struct {
	// Chain is the leaf and the intermediates, leaf first, as DER.
	Chain [][]byte
	Leaf  *x509.Certificate
	Key   *ecdsa.PrivateKey
}

// TLSCertificate returns the SVID as a tls.Certificate.
func (s *SVID) TLSCertificate() *tls.Certificate {
	return &tls.Certificate{Certificate: s.Chain, PrivateKey: s.Key, Leaf: s.Leaf}
}

// SVID signs an X.509-SVID for id with a new key, valid from now for ttl
// (cut to c's validity).
func (c *CA) SVID(tb testing.TB, id spiffeid.ID, now time.Time, ttl time.Duration) *SVID {
	tb.Helper()
	key := NewKey(tb)
	der, err := x509ca.SignX509SVID(now, c.Issuer(), x509ca.SVIDParams{ID: id, TTL: ttl, PublicKey: key.Public()})
	if err != nil {
		tb.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	chain := [][]byte{der}
	if c.Cert != c.Root {
		for _, ic := range c.Chain {
			chain = append(chain, ic.Raw)
		}
	}
	return &SVID{Chain: chain, Leaf: leaf, Key: key}
}
