package federation_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"

	"writ.dev/writ/ca/federation"
)

// bigRSAKey is an RSA public key of bits bits (not a usable key: only
// its size matters).
func bigRSAKey(bits int) *rsa.PublicKey {
	n := new(big.Int).Lsh(big.NewInt(1), uint(bits-1))
	n.Add(n, big.NewInt(1))
	return &rsa.PublicKey{N: n, E: 1<<31 - 1}
}

// TestCheckBundleRSAKeySize: a federated bundle with an RSA key longer
// than MaxRSAKeyBits is refused. Every JWT-SVID or X.509-SVID a caller
// presents for that trust domain would be verified with it, at a cost
// that grows with the square of its size.
func TestCheckBundleRSAKeySize(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caCert := func(pub any) *x509.Certificate {
		now := time.Now()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "partner CA"},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, ec)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	tests := []struct {
		name string
		add  func(b *spiffebundle.Bundle)
		ok   bool
	}{
		{"JWT RSA at the bound", func(b *spiffebundle.Bundle) { _ = b.AddJWTAuthority("k", bigRSAKey(federation.MaxRSAKeyBits)) }, true},
		{"JWT RSA over the bound", func(b *spiffebundle.Bundle) { _ = b.AddJWTAuthority("k", bigRSAKey(federation.MaxRSAKeyBits+1)) }, false},
		{"X.509 RSA over the bound", func(b *spiffebundle.Bundle) { b.AddX509Authority(caCert(bigRSAKey(federation.MaxRSAKeyBits + 1))) }, false},
		{"X.509 ECDSA", func(b *spiffebundle.Bundle) { b.AddX509Authority(caCert(&ec.PublicKey)) }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := spiffebundle.New(partner)
			tt.add(b)
			err := federation.CheckBundle(partner, b)
			if tt.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tt.ok && !errors.Is(err, federation.ErrBundle) {
				t.Fatalf("err %v, want %v", err, federation.ErrBundle)
			}
		})
	}
}

// TestCheckBundleJWTKeysArePublic: a JWK parses into a private or a
// symmetric key as readily as into a public one. A federated bundle whose
// JWT authority is one of those is refused as a bundle (not left to fail
// later, in the datastore, as an internal error).
func TestCheckBundleJWTKeysArePublic(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		key  any
		ok   bool
	}{
		{"ECDSA public key", &ec.PublicKey, true},
		{"ECDSA private key", ec, false},
		{"symmetric key", []byte("a shared secret of 32 bytes ....."), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := spiffebundle.New(partner)
			if err := b.AddJWTAuthority("k", tt.key); err != nil {
				t.Fatal(err)
			}
			err := federation.CheckBundle(partner, b)
			if tt.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tt.ok && !errors.Is(err, federation.ErrBundle) {
				t.Fatalf("err %v, want %v", err, federation.ErrBundle)
			}
		})
	}
}
