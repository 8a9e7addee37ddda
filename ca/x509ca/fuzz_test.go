package x509ca_test

import (
	"crypto"
	"crypto/x509"
	"errors"
	"slices"
	"testing"

	"writ.dev/writ/ca/x509ca"
)

func FuzzCheckCSR(f *testing.F) {
	valid := mustCSR(f, keyP256(), nil)
	tampered := slices.Clone(valid)
	tampered[len(tampered)-3] ^= 1
	for _, seed := range [][]byte{
		valid,
		mustCSR(f, keyP384(), nil),
		mustCSR(f, keyRSA2048(), nil),
		mustCSR(f, keyRSA2048(), &x509.CertificateRequest{SignatureAlgorithm: x509.SHA256WithRSAPSS}),
		hostileCSR(f, keyP256()),
		tampered,
		resignCSR(f, valid, keyP256b(), oidECDSAWithSHA256, crypto.SHA256),
		resignCSR(f, valid, keyP256(), oidECDSAWithSHA1, crypto.SHA1),
		mustCSR(f, keyP224(), nil),
		mustCSR(f, keyP521(), nil),
		mustCSR(f, keyRSA1024(), nil),
		mustCSR(f, keyEd25519(), nil),
		valid[:len(valid)/2],
		{},
		{0x30, 0x80},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, der []byte) {
		pub, err := x509ca.CheckCSR(der)
		if err != nil {
			if !errors.Is(err, x509ca.ErrCSR) {
				t.Fatalf("error does not wrap ErrCSR: %v", err)
			}
			if pub != nil {
				t.Fatal("key returned with error")
			}
			return
		}
		if len(der) > x509ca.MaxCSRSize {
			t.Fatalf("accepted %d bytes", len(der))
		}
		if err := x509ca.CheckPublicKey(pub); err != nil {
			t.Fatalf("accepted a key outside the policy: %v", err)
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil || csr.CheckSignature() != nil {
			t.Fatalf("accepted a CSR that does not parse or verify")
		}
	})
}
