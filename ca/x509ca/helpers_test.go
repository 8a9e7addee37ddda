package x509ca_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/x509ca"
)

var (
	td      = spiffeid.RequireTrustDomainFromString("example.org")
	otherTD = spiffeid.RequireTrustDomainFromString("other.example")
	// t0 is the reference signing time: whole seconds, UTC.
	t0 = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
)

// Keys are expensive to make under -race; each kind is made once.
var (
	keyP224    = sync.OnceValue(func() crypto.Signer { return mustKey(ecdsa.GenerateKey(elliptic.P224(), rand.Reader)) })
	keyP256    = sync.OnceValue(func() crypto.Signer { return mustKey(ecdsa.GenerateKey(elliptic.P256(), rand.Reader)) })
	keyP256b   = sync.OnceValue(func() crypto.Signer { return mustKey(ecdsa.GenerateKey(elliptic.P256(), rand.Reader)) })
	keyP384    = sync.OnceValue(func() crypto.Signer { return mustKey(ecdsa.GenerateKey(elliptic.P384(), rand.Reader)) })
	keyP521    = sync.OnceValue(func() crypto.Signer { return mustKey(ecdsa.GenerateKey(elliptic.P521(), rand.Reader)) })
	keyRSA1024 = sync.OnceValue(func() crypto.Signer { return mustKey(rsa.GenerateKey(rand.Reader, 1024)) })
	keyRSA2048 = sync.OnceValue(func() crypto.Signer { return mustKey(rsa.GenerateKey(rand.Reader, 2048)) })
	keyRSA3072 = sync.OnceValue(func() crypto.Signer { return mustKey(rsa.GenerateKey(rand.Reader, 3072)) })
	keyRSA4096 = sync.OnceValue(func() crypto.Signer { return mustKey(rsa.GenerateKey(rand.Reader, 4096)) })
	keyEd25519 = sync.OnceValue(func() crypto.Signer {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return mustKey(k, err)
	})
)

func mustKey[K crypto.Signer](k K, err error) crypto.Signer {
	if err != nil {
		panic(err)
	}
	return k
}

// newIssuer makes a self-signed CA at now with the given key and TTL.
func newIssuer(t testing.TB, now time.Time, key crypto.Signer, ttl time.Duration) *x509ca.Issuer {
	t.Helper()
	cert, err := x509ca.NewSelfSignedCA(now, td, key, ttl)
	if err != nil {
		t.Fatalf("NewSelfSignedCA: %v", err)
	}
	return &x509ca.Issuer{Cert: cert, Signer: key}
}

func mustCSR(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatalf("CreateCertificateRequest: %v", err)
	}
	return der
}

// rawCSR is the outer structure of a PKCS#10 request.
type rawCSR struct {
	TBS       asn1.RawValue
	Algorithm pkix.AlgorithmIdentifier
	Signature asn1.BitString
}

// resignCSR replaces the signature of a DER CSR by key's signature over the
// same TBS with hash h, under the algorithm identifier oid.
func resignCSR(t testing.TB, der []byte, key crypto.Signer, oid asn1.ObjectIdentifier, h crypto.Hash) []byte {
	t.Helper()
	var r rawCSR
	if rest, err := asn1.Unmarshal(der, &r); err != nil || len(rest) != 0 {
		t.Fatalf("unmarshal CSR: %v", err)
	}
	hh := h.New()
	hh.Write(r.TBS.FullBytes)
	sig, err := key.Sign(rand.Reader, hh.Sum(nil), h)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	r.Algorithm = pkix.AlgorithmIdentifier{Algorithm: oid}
	if _, isRSA := key.(*rsa.PrivateKey); isRSA {
		r.Algorithm.Parameters = asn1.NullRawValue
	}
	r.Signature = asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)}
	out, err := asn1.Marshal(r)
	if err != nil {
		t.Fatalf("marshal CSR: %v", err)
	}
	return out
}

var (
	oidECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidECDSAWithSHA1   = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 1}
	oidSHA1WithRSA     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 5}
	oidExtKeyUsage     = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidKeyUsage        = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidBasicConstr     = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidSAN             = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidAKI             = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidSKI             = asn1.ObjectIdentifier{2, 5, 29, 14}
	oidPrivate         = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}
)

// hostileCSR is a CSR for key that asks for everything a leaf must not get
// from it: other SANs of every type, a CA basic constraint, key usages,
// an unknown extension and a chosen subject.
func hostileCSR(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	bc, _ := asn1.Marshal(struct {
		IsCA       bool
		MaxPathLen int
	}{true, 5})
	ku, _ := asn1.Marshal(asn1.BitString{Bytes: []byte{0x06}, BitLength: 7}) // certSign|crlSign
	return mustCSR(t, key, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: "evil.attacker.example", Organization: []string{"Evil"}, SerialNumber: "1"},
		DNSNames: []string{"evil.attacker.example", "a.example.org"},
		URIs: []*url.URL{
			{Scheme: "spiffe", Host: "example.org", Path: "/admin"},
			{Scheme: "spiffe", Host: "other.example", Path: "/x"},
		},
		EmailAddresses: []string{"root@example.org"},
		ExtraExtensions: []pkix.Extension{
			{Id: oidBasicConstr, Critical: true, Value: bc},
			{Id: oidKeyUsage, Critical: true, Value: ku},
			{Id: oidPrivate, Value: []byte{0x05, 0x00}},
		},
	})
}

// rawLeaf signs an arbitrary template with iss, for verifier tests.
func rawLeaf(t testing.TB, iss *x509ca.Issuer, mutate func(*x509.Certificate)) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(42),
		Subject:               pkix.Name{Organization: []string{"Writ"}},
		NotBefore:             t0.Add(-time.Minute),
		NotAfter:              t0.Add(time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:                  []*url.URL{spiffeid.RequireFromPath(td, "/w").URL()},
	}
	if mutate != nil {
		mutate(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, iss.Cert, keyP256b().Public(), iss.Signer)
	if err != nil {
		t.Fatalf("CreateCertificate: %v", err)
	}
	return mustParse(t, der)
}

func mustParse(t testing.TB, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("ParseCertificate: %v", err)
	}
	return c
}

func extension(c *x509.Certificate, oid asn1.ObjectIdentifier) (pkix.Extension, bool) {
	for _, e := range c.Extensions {
		if e.Id.Equal(oid) {
			return e, true
		}
	}
	return pkix.Extension{}, false
}
