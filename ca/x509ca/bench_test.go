package x509ca_test

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/x509ca"
)

// BenchmarkSignX509SVID and BenchmarkCreateCertificateRaw use the same
// P-256 issuer and leaf keys and an equivalent certificate, so their ratio
// is the cost of SignX509SVID's checks over raw x509.CreateCertificate.

func BenchmarkSignX509SVID(b *testing.B) {
	iss := newIssuer(b, t0, keyP256(), 24*time.Hour)
	p := x509ca.SVIDParams{
		ID:        spiffeid.RequireFromPath(td, "/ns/prod/sa/web"),
		DNSNames:  []string{"web.example.org"},
		TTL:       time.Hour,
		PublicKey: keyP256b().Public(),
	}
	now := t0.Add(time.Minute)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := x509ca.SignX509SVID(now, iss, p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCreateCertificateRaw(b *testing.B) {
	iss := newIssuer(b, t0, keyP256(), 24*time.Hour)
	now := t0.Add(time.Minute)
	tmpl := &x509.Certificate{
		SerialNumber:          new(big.Int).Lsh(big.NewInt(1), 127),
		Subject:               pkix.Name{Organization: []string{"Writ"}, CommonName: "web.example.org"},
		NotBefore:             now.Add(-x509ca.Backdate),
		NotAfter:              now.Add(time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:                  []*url.URL{spiffeid.RequireFromPath(td, "/ns/prod/sa/web").URL()},
		DNSNames:              []string{"web.example.org"},
		SubjectKeyId:          make([]byte, 20),
		AuthorityKeyId:        iss.Cert.SubjectKeyId,
	}
	pub := keyP256b().Public()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := x509.CreateCertificate(rand.Reader, tmpl, iss.Cert, pub, iss.Signer); err != nil {
			b.Fatal(err)
		}
	}
}
