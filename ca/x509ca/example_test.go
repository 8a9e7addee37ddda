package x509ca_test

import (
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/x509ca"
)

func ExampleSignX509SVID() {
	now := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	td := spiffeid.RequireTrustDomainFromString("example.org")

	caKey, _ := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	caCert, _ := x509ca.NewSelfSignedCA(now, td, caKey, 2*time.Hour)
	iss := &x509ca.Issuer{Cert: caCert, Signer: caKey}

	// On the agent: a key and a CSR. On the server: only the key is used.
	workloadKey, _ := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, workloadKey)
	pub, err := x509ca.CheckCSR(csr)
	if err != nil {
		panic(err)
	}

	// Asked for 4h, capped by the CA's lifetime.
	der, err := x509ca.SignX509SVID(now, iss, x509ca.SVIDParams{
		ID:        spiffeid.RequireFromPath(td, "/web"),
		DNSNames:  []string{"web.example.org"},
		TTL:       4 * time.Hour,
		PublicKey: pub,
	})
	if err != nil {
		panic(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	id, err := x509ca.VerifyX509SVID([]*x509.Certificate{leaf}, []*x509.Certificate{caCert}, now)
	fmt.Println(id, err)
	fmt.Println(leaf.NotBefore, leaf.NotAfter)
	// Output:
	// spiffe://example.org/web <nil>
	// 2030-06-01 11:59:30 +0000 UTC 2030-06-01 14:00:00 +0000 UTC
}
