package svidfiles

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"writ.dev/writ/ca/x509ca"
)

// testIssuer is a CA of a trust domain.
type testIssuer struct {
	iss *x509ca.Issuer
	td  spiffeid.TrustDomain
}

func newTestIssuer(t testing.TB, td string) *testIssuer {
	t.Helper()
	d := spiffeid.RequireTrustDomainFromString(td)
	key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509ca.NewSelfSignedCA(time.Now().Add(-time.Minute), d, key, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &testIssuer{iss: &x509ca.Issuer{Cert: cert, Signer: key}, td: d}
}

// svid signs a new X.509-SVID, with a new key, for path.
func (i *testIssuer) svid(t testing.TB, path string) *x509svid.SVID {
	t.Helper()
	key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromPath(i.td, path)
	der, err := x509ca.SignX509SVID(time.Now(), i.iss, x509ca.SVIDParams{ID: id, TTL: time.Hour, PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

func (i *testIssuer) bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(i.td, []*x509.Certificate{i.iss.Cert})
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// A trust domain that drops out of the X.509 context loses its federated
// bundle file; files that only resemble one, and configured names, stay.
func TestWriteX509FilesRemovesDefederatedBundles(t *testing.T) {
	own, fedA, fedB := newTestIssuer(t, "example.org"), newTestIssuer(t, "a.test"), newTestIssuer(t, "b.test")
	for _, format := range []Format{PEM, DER} {
		t.Run(string(format), func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.CertDir, cfg.Format = t.TempDir(), format
			cfg.JWTBundleFileName = "federated_bundle.jwt.test." + string(format) // configured: never stale
			keepers := []string{
				cfg.JWTBundleFileName,
				"federated_bundle.notes.txt",
				"federated_bundle.b.test.pem.bak",
				"federated_bundle..pem",
				"federated_bundle.B.test." + string(format), // not a trust domain name
			}
			for _, n := range keepers {
				if err := os.WriteFile(filepath.Join(cfg.CertDir, n), []byte("mine"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			// A directory named like a bundle file is not touched either.
			dirLike := "federated_bundle.c.test." + string(format)
			if err := os.Mkdir(filepath.Join(cfg.CertDir, dirLike), 0o700); err != nil {
				t.Fatal(err)
			}
			keepers = append(keepers, dirLike)
			svid := own.svid(t, "/web")
			aFile, bFile := FederatedBundleFileName("a.test", format), FederatedBundleFileName("b.test", format)

			if _, err := cfg.WriteX509Files(svid, x509bundle.NewSet(own.bundle(), fedA.bundle(), fedB.bundle())); err != nil {
				t.Fatal(err)
			}
			names := dirNames(t, cfg.CertDir)
			if !slices.Contains(names, aFile) || !slices.Contains(names, bFile) {
				t.Fatalf("files %v: want %s and %s", names, aFile, bFile)
			}
			changed, err := cfg.WriteX509Files(svid, x509bundle.NewSet(own.bundle(), fedA.bundle()))
			if err != nil || !changed {
				t.Fatalf("b.test dropped: changed %v, %v", changed, err)
			}
			names = dirNames(t, cfg.CertDir)
			if slices.Contains(names, bFile) {
				t.Errorf("%s is still there after b.test left the context: %v", bFile, names)
			}
			if !slices.Contains(names, aFile) {
				t.Errorf("%s is gone: %v", aFile, names)
			}
			for _, n := range keepers {
				if !slices.Contains(names, n) {
					t.Errorf("%s, not a federated bundle file of Writ's, was removed", n)
				}
			}
		})
	}
}
