package certfile

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func writePair(t *testing.T, dir, cn string) (string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

func commonName(t *testing.T, r *Reloader) string {
	t.Helper()
	c, err := r.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.Subject.CommonName
}

func TestReloadsChangedFilesAndKeepsTheLastGood(t *testing.T) {
	old := checkEvery
	checkEvery = 0
	t.Cleanup(func() { checkEvery = old })
	dir := t.TempDir()
	certPath, keyPath := writePair(t, dir, "first")
	r, err := New(certPath, keyPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cn := commonName(t, r); cn != "first" {
		t.Fatalf("CN %q", cn)
	}
	writePair(t, dir, "second")
	if cn := commonName(t, r); cn != "second" {
		t.Fatalf("after replacing the files: CN %q", cn)
	}
	// A half-written replacement: the previous pair stays.
	if err := os.WriteFile(keyPath, []byte("-----BEGIN PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if cn := commonName(t, r); cn != "second" {
		t.Fatalf("after a broken key file: CN %q", cn)
	}
}

func TestNewFailsOnBadFiles(t *testing.T) {
	dir := t.TempDir()
	if _, err := New(filepath.Join(dir, "none.pem"), filepath.Join(dir, "none.key"), nil); err == nil {
		t.Fatal("missing files accepted")
	}
}
