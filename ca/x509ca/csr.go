package x509ca

import (
	"crypto"
	"crypto/x509"
	"fmt"
)

// MaxCSRSize bounds the DER CSRs CheckCSR parses.
const MaxCSRSize = 16 << 10

// CheckCSR parses a DER PKCS#10 CSR of at most MaxCSRSize bytes, checks
// its public key against the key policy (CheckPublicKey), verifies its
// self-signature (proof of possession of the private key) with a SHA-2
// based algorithm, and returns only the public key. Everything else in the
// CSR (subject, SANs, extensions, attributes) is ignored. Every error wraps
// ErrCSR; key policy failures also wrap ErrKeyPolicy.
func CheckCSR(der []byte) (crypto.PublicKey, error) {
	if len(der) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrCSR)
	}
	if len(der) > MaxCSRSize {
		return nil, fmt.Errorf("%w: %d bytes (limit %d)", ErrCSR, len(der), MaxCSRSize)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCSR, err)
	}
	// Policy first: it is cheap, and it keeps odd keys away from signature
	// verification.
	if err := CheckPublicKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCSR, err)
	}
	switch csr.SignatureAlgorithm {
	case x509.ECDSAWithSHA256, x509.ECDSAWithSHA384, x509.ECDSAWithSHA512,
		x509.SHA256WithRSA, x509.SHA384WithRSA, x509.SHA512WithRSA,
		x509.SHA256WithRSAPSS, x509.SHA384WithRSAPSS, x509.SHA512WithRSAPSS:
	default:
		return nil, fmt.Errorf("%w: signature algorithm %v not allowed", ErrCSR, csr.SignatureAlgorithm)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: no proof of possession: %w", ErrCSR, err)
	}
	return csr.PublicKey, nil
}
