package x509ca_test

import (
	"bytes"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"writ.dev/writ/ca/x509ca"
)

// TestSignCAChain: an SVID signed by an intermediate CA, sent with
// SVIDChain, verifies against a bundle that holds only the root.
func TestSignCAChain(t *testing.T) {
	root := newIssuer(t, t0, keyP256(), 48*time.Hour)
	now := t0.Add(time.Hour)
	cert, err := x509ca.SignCA(now, td, keyP256b().Public(), root, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 || !bytes.Equal(cert.AuthorityKeyId, root.Cert.SubjectKeyId) {
		t.Fatal("not a signing CA below the root")
	}
	if !cert.NotAfter.Equal(now.Add(24 * time.Hour)) {
		t.Fatalf("NotAfter %s", cert.NotAfter)
	}
	inter := &x509ca.Issuer{Cert: cert, Signer: keyP256b(), Chain: []*x509.Certificate{cert}}
	leaf, err := x509ca.SignX509SVID(now, inter, x509ca.SVIDParams{ID: spiffeid.RequireFromPath(td, "/w"), TTL: time.Hour, PublicKey: keyP384().Public()})
	if err != nil {
		t.Fatal(err)
	}
	chain := inter.SVIDChain(leaf)
	if len(chain) != 2 || !bytes.Equal(chain[0], leaf) || !bytes.Equal(chain[1], cert.Raw) {
		t.Fatal("SVIDChain is not the leaf then the intermediate")
	}
	bundle := x509bundle.FromX509Authorities(td, []*x509.Certificate{root.Cert})
	if _, _, err := x509svid.ParseAndVerify(chain, bundle, x509svid.WithTime(now)); err != nil {
		t.Fatalf("go-spiffe refuses the chain: %v", err)
	}
	if _, _, err := x509svid.ParseAndVerify(chain[:1], bundle, x509svid.WithTime(now)); err == nil {
		t.Fatal("the leaf alone verified without its intermediate")
	}
	certs := []*x509.Certificate{mustParse(t, chain[0]), cert}
	if _, err := x509ca.VerifyX509SVID(certs, []*x509.Certificate{root.Cert}, now); err != nil {
		t.Fatal(err)
	}
}

func TestSignCALimits(t *testing.T) {
	root := newIssuer(t, t0, keyP256(), 10*time.Hour)
	// Capped at the issuer's NotAfter.
	cert, err := x509ca.SignCA(t0, td, keyP256b().Public(), root, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !cert.NotAfter.Equal(root.Cert.NotAfter) {
		t.Fatalf("NotAfter %s beyond the issuer's %s", cert.NotAfter, root.Cert.NotAfter)
	}
	for _, tc := range []struct {
		name string
		now  time.Time
		td   spiffeid.TrustDomain
		want error
	}{
		{"issuer expired", t0.Add(10 * time.Hour), td, x509ca.ErrIssuerExpired},
		{"issuer not yet valid", t0.Add(-time.Hour), td, x509ca.ErrIssuerNotYetValid},
		{"another trust domain", t0, otherTD, x509ca.ErrParams},
		{"zero time", time.Time{}, td, x509ca.ErrParams},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := x509ca.SignCA(tc.now, tc.td, keyP256b().Public(), root, time.Hour); !errors.Is(err, tc.want) {
				t.Fatalf("SignCA = %v, want %v", err, tc.want)
			}
		})
	}
}
