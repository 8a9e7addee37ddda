package testca_test

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/testca"
)

// TestChains: SVIDs of a root and of an intermediate two levels down
// verify against the root alone, with x509ca's verifier and go-spiffe's,
// and a CA of the same trust domain that is not the root's does not.
func TestChains(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	id := spiffeid.RequireFromPath(td, "/web")
	now := time.Now()
	root := testca.New(t, td, now, 24*time.Hour)
	inter := root.Intermediate(t, now, 12*time.Hour).Intermediate(t, now, 6*time.Hour)
	for name, ca := range map[string]*testca.CA{"root": root, "intermediate": inter} {
		t.Run(name, func(t *testing.T) {
			s := ca.SVID(t, id, now, time.Hour)
			chain := make([]*x509.Certificate, len(s.Chain))
			for i, der := range s.Chain {
				c, err := x509.ParseCertificate(der)
				if err != nil {
					t.Fatal(err)
				}
				chain[i] = c
			}
			if got, err := x509ca.VerifyX509SVID(chain, []*x509.Certificate{root.Cert}, now); err != nil || got != id {
				t.Errorf("x509ca.VerifyX509SVID = %v, %v", got, err)
			}
			if got, _, err := x509svid.Verify(chain, root.Bundle(), x509svid.WithTime(now)); err != nil || got != id {
				t.Errorf("x509svid.Verify = %v, %v", got, err)
			}
			if _, err := x509ca.VerifyX509SVID(chain, []*x509.Certificate{testca.New(t, td, now, time.Hour).Cert}, now); err == nil {
				t.Error("verified against another CA")
			}
		})
	}
	if len(inter.Chain) != 2 || inter.Root != root.Cert || len(root.Chain) != 0 {
		t.Errorf("chains: intermediate %d certificates, root %d", len(inter.Chain), len(root.Chain))
	}
}
