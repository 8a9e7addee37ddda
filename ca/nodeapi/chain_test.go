package nodeapi_test

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/internal/testca"
)

// TestChainedCA: with a CA signed under an upstream root, every SVID the
// node API sends (agent SVIDs from Attest and RenewAgent, workload SVIDs,
// the server's own TLS certificate) carries its chain, leaf first and
// without the root, and verifies against a bundle holding only the root.
func TestChainedCA(t *testing.T) {
	rootCA := testca.New(t, td, testStart().Add(-time.Hour), 365*24*time.Hour)
	root := rootCA.Cert
	e := newEnv(t, envOptions{authority: &keymanager.Upstream{
		Issuer: rootCA.Issuer(),
		Roots:  []*x509.Certificate{root},
	}})
	if auths := e.bundle().X509Authorities(); len(auths) != 1 || !auths[0].Equal(root) {
		t.Fatalf("bundle holds %d X.509 authorities, want the root only", len(auths))
	}
	ca := e.km.Active().X509.Cert
	rootOnly := x509bundle.FromX509Authorities(td, []*x509.Certificate{root})
	checkChain := func(what string, chain [][]byte) {
		t.Helper()
		if len(chain) != 2 || string(chain[1]) != string(ca.Raw) {
			t.Fatalf("%s: chain of %d certificates, want the leaf and the CA", what, len(chain))
		}
		if _, _, err := x509svid.ParseAndVerify(chain, rootOnly, x509svid.WithTime(e.clock.Now())); err != nil {
			t.Fatalf("%s: go-spiffe refuses the chain: %v", what, err)
		}
	}

	// Attest verifies the server's TLS chain (clientTLS) on the way.
	a := e.attest(agentA)
	checkChain("agent SVID", a.cert.Certificate)

	en := e.createEntry("spiffe://example.org/web", agentA, nil)
	// The agent authenticates with its chain.
	resp, err := a.client.BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{Requests: []*nodev1.X509SVIDRequest{{EntryId: en.ID, Csr: newCSR(t, newKey(t))}}})
	if err != nil {
		t.Fatal(err)
	}
	checkChain("workload SVID", resp.Results[0].SvidChain)

	renewed, err := a.client.RenewAgent(ctxT(t), &nodev1.RenewAgentRequest{Csr: newCSR(t, a.key)})
	if err != nil {
		t.Fatal(err)
	}
	checkChain("renewed agent SVID", renewed.SvidChain)
}
