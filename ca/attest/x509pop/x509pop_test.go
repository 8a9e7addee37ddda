package x509pop_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/attest"
	"writ.dev/writ/ca/attest/x509pop"
	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/internal/nodepki"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// run attests cert with the verifier, answering with the agent half.
func run(t *testing.T, v *x509pop.Verifier, cert *nodepki.Cert) (*attest.Result, error) {
	t.Helper()
	a, err := x509pop.NewAgent([][]byte{cert.Cert.Raw}, cert.Key)
	if err != nil {
		t.Fatal(err)
	}
	p, err := a.Payload(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return v.Attest(context.Background(), p, a.Respond)
}

func TestPathTemplate(t *testing.T) {
	now := time.Now()
	ca := nodepki.NewCA(t, "org CA", now)
	tests := []struct {
		name, tmpl, cn string
		ou             []string
		want           string
		err            error
	}{
		{name: "subject CN", tmpl: "{{ .PluginName }}/{{ .Subject.CommonName }}", cn: "web1", want: "spiffe://example.org/writ/agent/x509pop/web1"},
		{name: "OU and CN", tmpl: "nodes/{{ index .Subject.OrganizationalUnit 0 }}/{{ .Subject.CommonName }}", cn: "web1", want: "spiffe://example.org/writ/agent/nodes/web/web1"},
		{name: "dot-dot is not repaired", tmpl: "x/{{ .Subject.CommonName }}", cn: "..", err: attest.ErrBadAgentID},
		{name: "space refused", tmpl: "x/{{ .Subject.CommonName }}", cn: "web 1", err: attest.ErrBadAgentID},
		{name: "empty segment", tmpl: "x/{{ .Subject.CommonName }}/y", cn: "", err: attest.ErrBadAgentID},
		{name: "unknown field", tmpl: "{{ .Nope }}", cn: "web1", err: attest.ErrBadAgentID},
		// A value is never more than one segment: CN "web/web1" must not
		// become the ID of OU "web", CN "web1".
		{name: "slash in a value", tmpl: "nodes/{{ .Subject.CommonName }}", cn: "web/web1", err: attest.ErrBadAgentID},
		{name: "slash in a value inside a segment", tmpl: "nodes/n-{{ .Subject.CommonName }}", cn: "web/web1", err: attest.ErrBadAgentID},
		{name: "slash through printf", tmpl: `nodes/{{ printf "%s" .Subject.CommonName }}`, cn: "web/web1", err: attest.ErrBadAgentID},
		{name: "slash in a range", tmpl: "nodes/{{ range .Subject.OrganizationalUnit }}{{ . }}{{ end }}/{{ .Subject.CommonName }}", cn: "web1", ou: []string{"a/b"}, err: attest.ErrBadAgentID},
		{name: "slash in a with", tmpl: "nodes/{{ with .Subject.CommonName }}{{ . }}{{ end }}", cn: "a/b", err: attest.ErrBadAgentID},
		{name: "literal slashes kept", tmpl: "{{ .PluginName }}/cn/{{ .Subject.CommonName }}", cn: "web1", want: "spiffe://example.org/writ/agent/x509pop/cn/web1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl, err := x509pop.ParsePathTemplate(tt.tmpl)
			if err != nil {
				t.Fatal(err)
			}
			v, err := x509pop.NewVerifier(x509pop.Config{TrustDomain: td, Roots: func() []*x509.Certificate { return []*x509.Certificate{ca.Cert} }, PathTemplate: tmpl, Clock: fakeclock.New(now)})
			if err != nil {
				t.Fatal(err)
			}
			ou := tt.ou
			if ou == nil {
				ou = []string{"web"}
			}
			res, err := run(t, v, ca.Issue(t, nodepki.Node{CN: tt.cn, OU: ou}, now))
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.AgentID.String() != tt.want {
				t.Errorf("got %s, want %s", res.AgentID, tt.want)
			}
		})
	}
}

// TestRootsReloaded: the verifier asks for the roots at each attestation,
// so a CA added to the bundle is trusted at once and a removed one no
// longer is.
func TestRootsReloaded(t *testing.T) {
	now := time.Now()
	a, b := nodepki.NewCA(t, "A", now), nodepki.NewCA(t, "B", now)
	roots := []*x509.Certificate{a.Cert}
	v, err := x509pop.NewVerifier(x509pop.Config{TrustDomain: td, Roots: func() []*x509.Certificate { return roots }, Clock: fakeclock.New(now)})
	if err != nil {
		t.Fatal(err)
	}
	nodeB := b.Issue(t, nodepki.Node{CN: "n"}, now)
	if _, err := run(t, v, nodeB); !errors.Is(err, attest.ErrNotTrusted) {
		t.Fatalf("untrusted CA: %v", err)
	}
	roots = []*x509.Certificate{b.Cert}
	if _, err := run(t, v, nodeB); err != nil {
		t.Fatalf("after adding B: %v", err)
	}
	if _, err := run(t, v, a.Issue(t, nodepki.Node{CN: "n"}, now)); !errors.Is(err, attest.ErrNotTrusted) {
		t.Fatalf("after removing A: %v", err)
	}
}

// TestValidityFollowsClock: a certificate valid now stops attesting once
// the clock passes its NotAfter.
func TestValidityFollowsClock(t *testing.T) {
	now := time.Now()
	ca := nodepki.NewCA(t, "A", now)
	clk := fakeclock.New(now)
	v, err := x509pop.NewVerifier(x509pop.Config{TrustDomain: td, Roots: func() []*x509.Certificate { return []*x509.Certificate{ca.Cert} }, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	node := ca.Issue(t, nodepki.Node{CN: "n", NotAfter: now.Add(time.Minute)}, now)
	if _, err := run(t, v, node); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Minute + time.Second)
	if _, err := run(t, v, node); !errors.Is(err, attest.ErrNotTrusted) {
		t.Fatalf("after NotAfter: %v", err)
	}
}

func TestNewAgentKeyMismatch(t *testing.T) {
	now := time.Now()
	ca := nodepki.NewCA(t, "A", now)
	n1, n2 := ca.Issue(t, nodepki.Node{CN: "1"}, now), ca.Issue(t, nodepki.Node{CN: "2"}, now)
	if _, err := x509pop.NewAgent([][]byte{n1.Cert.Raw}, n2.Key); err == nil {
		t.Fatal("NewAgent accepted another certificate's key")
	}
}

// TestOversizedRSAKeyRefused: a certificate of the payload whose RSA key
// is longer than MaxRSAKeyBits is refused before any signature is
// checked with it. Unauthenticated agents choose the intermediates, and
// one with a 380000-bit modulus and a 31-bit exponent costs the server
// seconds of CPU per verification (the leaf here is a valid node
// certificate: only the bound refuses it).
func TestOversizedRSAKeyRefused(t *testing.T) {
	now := time.Now()
	ca := nodepki.NewCA(t, "org CA", now)
	node := ca.Issue(t, nodepki.Node{CN: "web1"}, now)
	n := new(big.Int).Lsh(big.NewInt(1), x509pop.MaxRSAKeyBits)
	n.Add(n, big.NewInt(1)) // MaxRSAKeyBits+1 bits, odd
	junk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: ca.Cert.Subject,
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &rsa.PublicKey{N: n, E: 1<<31 - 1}, junk)
	if err != nil {
		t.Fatal(err)
	}
	v, err := x509pop.NewVerifier(x509pop.Config{TrustDomain: td, Roots: func() []*x509.Certificate { return []*x509.Certificate{ca.Cert} }, Clock: fakeclock.New(now)})
	if err != nil {
		t.Fatal(err)
	}
	a, err := x509pop.NewAgent([][]byte{node.Cert.Raw, der}, node.Key)
	if err != nil {
		t.Fatal(err)
	}
	p, err := a.Payload(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Attest(context.Background(), p, a.Respond); !errors.Is(err, attest.ErrInvalidPayload) {
		t.Fatalf("err %v, want %v", err, attest.ErrInvalidPayload)
	}
	// Without it, the same node attests.
	if _, err := run(t, v, node); err != nil {
		t.Fatal(err)
	}
}

// TestOwnSVIDRefused: when the x509pop roots hold the CA that also signs
// Writ's CAs, Writ's own SVIDs (and anything issued under a CA carrying
// a SPIFFE ID of the trust domain, such as a downstream CA) verify
// against them; they are workload or agent identities and are refused as
// node certificates, before any challenge.
func TestOwnSVIDRefused(t *testing.T) {
	now := time.Now()
	org := nodepki.NewCA(t, "org CA", now)
	// writCA is a CA certificate like Writ's own, signed by org.
	writKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "writ CA"},
		URIs:      []*url.URL{td.ID().URL()},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, org.Cert, &writKey.PublicKey, org.Key)
	if err != nil {
		t.Fatal(err)
	}
	writCert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	writCA := &nodepki.CA{Cert: writCert, Key: writKey}
	uri := func(s string) []*url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return []*url.URL{u}
	}
	tests := []struct {
		name  string
		cert  *nodepki.Cert
		chain []*x509.Certificate
		ok    bool
	}{
		{name: "node certificate", cert: org.Issue(t, nodepki.Node{CN: "web1"}, now), ok: true},
		{name: "URI SAN of another scheme", cert: org.Issue(t, nodepki.Node{CN: "web1", URIs: uri("https://example.org/web1")}, now), ok: true},
		{name: "SPIFFE ID of another trust domain", cert: org.Issue(t, nodepki.Node{CN: "web1", URIs: uri("spiffe://other.org/web1")}, now), ok: true},
		{name: "workload SVID", cert: org.Issue(t, nodepki.Node{URIs: uri("spiffe://example.org/web")}, now)},
		{name: "agent SVID", cert: org.Issue(t, nodepki.Node{URIs: uri("spiffe://example.org/writ/agent/x509pop/abc")}, now)},
		{name: "trust domain in capitals", cert: org.Issue(t, nodepki.Node{URIs: uri("SPIFFE://EXAMPLE.ORG/web")}, now)},
		{name: "SVID signed by a Writ CA", cert: writCA.Issue(t, nodepki.Node{URIs: uri("spiffe://example.org/web")}, now), chain: []*x509.Certificate{writCert}},
		{name: "plain certificate under a Writ CA", cert: writCA.Issue(t, nodepki.Node{CN: "web1"}, now), chain: []*x509.Certificate{writCert}},
	}
	v, err := x509pop.NewVerifier(x509pop.Config{TrustDomain: td, Roots: func() []*x509.Certificate { return []*x509.Certificate{org.Cert} }, Clock: fakeclock.New(now)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain := [][]byte{tt.cert.Cert.Raw}
			for _, c := range tt.chain {
				chain = append(chain, c.Raw)
			}
			a, err := x509pop.NewAgent(chain, tt.cert.Key)
			if err != nil {
				t.Fatal(err)
			}
			p, err := a.Payload(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			challenged := false
			_, err = v.Attest(context.Background(), p, func(ctx context.Context, nonce []byte) ([]byte, error) {
				challenged = true
				return a.Respond(ctx, nonce)
			})
			if tt.ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, attest.ErrNotTrusted) {
				t.Fatalf("err %v, want %v", err, attest.ErrNotTrusted)
			}
			if challenged {
				t.Error("challenged before the certificate was refused")
			}
			t.Log(err)
		})
	}
}
