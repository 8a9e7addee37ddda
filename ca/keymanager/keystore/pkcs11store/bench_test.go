package pkcs11store_test

import (
	"context"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/ca/keymanager/keystore"
	"writ.dev/writ/ca/keymanager/keystore/pkcs11store"
	"writ.dev/writ/ca/keymanager/keystoretest"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/softhsmtest"
)

// BenchmarkSignX509SVID signs the same X.509-SVID with a P-256 CA key
// held in memory and with one in a SoftHSM2 token; the ratio of the two
// ns/op is the cost of signing through PKCS#11.
func BenchmarkSignX509SVID(b *testing.B) {
	ctx := context.Background()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	now := time.Now()
	leaf, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		b.Fatal(err)
	}
	p := x509ca.SVIDParams{ID: spiffeid.RequireFromPath(td, "/ns/prod/sa/web"), TTL: time.Hour, PublicKey: leaf.Public()}
	for _, bc := range []struct {
		name  string
		store func(b *testing.B) keymanager.KeyStore
	}{
		{"memory", func(*testing.B) keymanager.KeyStore { return keystore.NewMemory() }},
		{"pkcs11-softhsm2", func(b *testing.B) keymanager.KeyStore {
			tok := softhsmtest.New(b)
			b.Setenv("SOFTHSM2_CONF", tok.Conf)
			s, err := pkcs11store.Open(ctx, pkcs11store.Config{Module: tok.Module, TokenLabel: tok.Label, PIN: tok.PIN})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { s.Close() })
			return s
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ks := bc.store(b)
			signer, err := ks.Generate(ctx, keystoretest.ID(0), x509ca.KeyTypeECP256)
			if err != nil {
				b.Fatal(err)
			}
			cert, err := x509ca.NewSelfSignedCA(now, td, signer, 24*time.Hour)
			if err != nil {
				b.Fatal(err)
			}
			iss := &x509ca.Issuer{Cert: cert, Signer: signer}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := x509ca.SignX509SVID(now, iss, p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
