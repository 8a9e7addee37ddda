package integration_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// mintUpstream makes a CA certificate named cn signed by parent (or
// self-signed), valid for a day from an hour ago.
func mintUpstream(t *testing.T, cn string, parent *x509.Certificate, parentKey crypto.Signer, edit func(*x509.Certificate)) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		BasicConstraintsValid: true,
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	if edit != nil {
		edit(tmpl)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func writeCerts(t *testing.T, path string, certs ...*x509.Certificate) {
	t.Helper()
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
}

func writeKey(t *testing.T, path string, key crypto.Signer) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestIntegrationUpstreamDisk: a server chained under an upstream root
// and intermediate given as files publishes only the root; an agent
// trusting only the root attests, and a workload's X.509-SVID (leaf,
// Writ CA, upstream intermediate) verifies with go-spiffe against a
// bundle built from the root file alone.
func TestIntegrationUpstreamDisk(t *testing.T) {
	up := shortTempDir(t)
	root, rootKey := mintUpstream(t, "Upstream Root", nil, nil, nil)
	inter, interKey := mintUpstream(t, "Upstream Intermediate", root, rootKey, nil)
	certFile, keyFile, rootFile := filepath.Join(up, "upstream.pem"), filepath.Join(up, "upstream.key"), filepath.Join(up, "root.pem")
	writeCerts(t, certFile, inter)
	writeKey(t, keyFile, interKey)
	writeCerts(t, rootFile, root)

	e := newNodeEnv(t, "--upstream-authority", "disk", "--upstream-cert", certFile, "--upstream-key", keyFile, "--upstream-bundle", rootFile)
	published, err := os.ReadFile(e.bundle)
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := os.ReadFile(rootFile); strings.TrimSpace(string(published)) != strings.TrimSpace(string(want)) {
		t.Fatalf("bundle is not the upstream root alone:\n%s", published)
	}
	// The agent is given the root file only.
	a := startAgent(t, e.addr, filepath.Join(e.dir, "a"), rootFile, e.token("spiffe://example.org/writ/agent/a"))
	e.entry("spiffe://example.org/web", "spiffe://example.org/writ/agent/a")
	waitSVIDs(t, a, []string{"spiffe://example.org/web"})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	svid, err := workloadapi.FetchX509SVID(ctx, socketAddr(a))
	if err != nil {
		t.Fatal(err)
	}
	if len(svid.Certificates) != 3 || !svid.Certificates[2].Equal(inter) {
		t.Fatalf("SVID chain of %d certificates, want leaf, Writ CA and the upstream intermediate", len(svid.Certificates))
	}
	rootsOnly, err := x509bundle.Load(spiffeid.RequireTrustDomainFromString("example.org"), rootFile)
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := x509svid.Verify(svid.Certificates, rootsOnly)
	if err != nil {
		t.Fatalf("the SVID does not verify against the upstream root: %v", err)
	}
	if id.String() != "spiffe://example.org/web" {
		t.Fatalf("verified ID %s", id)
	}
	if !svid.Certificates[1].NotAfter.After(time.Now()) || svid.Certificates[1].NotAfter.After(inter.NotAfter) {
		t.Fatalf("Writ CA valid until %s, upstream until %s", svid.Certificates[1].NotAfter, inter.NotAfter)
	}
}

// TestIntegrationUpstreamRefused: the server refuses to start on an
// upstream that cannot sign its CA, and says why.
func TestIntegrationUpstreamRefused(t *testing.T) {
	up := shortTempDir(t)
	root, rootKey := mintUpstream(t, "Upstream Root", nil, nil, nil)
	inter, interKey := mintUpstream(t, "Upstream Intermediate", root, rootKey, func(c *x509.Certificate) { c.MaxPathLen, c.MaxPathLenZero = 0, true })
	certFile, keyFile := filepath.Join(up, "upstream.pem"), filepath.Join(up, "upstream.key")
	writeCerts(t, certFile, inter, root)
	writeKey(t, keyFile, interKey)
	_, errOut, code := runWrit(t, nil, "server", "run", "--trust-domain", "example.org", "--data-dir", filepath.Join(up, "data"),
		"--bind-address", "127.0.0.1:0", "--upstream-authority", "disk", "--upstream-cert", certFile, "--upstream-key", keyFile)
	if code == 0 || !strings.Contains(errOut, "path length") || !strings.Contains(errOut, "Upstream Intermediate") {
		t.Fatalf("server on an upstream with path length 0: exit %d\n%s", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(up, "data", "keys")); err == nil {
		if keys, _ := filepath.Glob(filepath.Join(up, "data", "keys", "*.pem")); len(keys) != 0 {
			t.Fatalf("refused upstream left CA keys: %v", keys)
		}
	}
}
