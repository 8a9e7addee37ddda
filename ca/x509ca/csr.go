package x509ca

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ErrCSRName: a CA's CSR names something other than its trust domain
// (CheckCACSR).
var ErrCSRName = errors.New("x509ca: CSR names another identity than the trust domain")

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

// CheckCACSR checks a DER CSR for a downstream CA of trust domain td as
// CheckCSR does and, unlike CheckCSR, also refuses one that asks for
// another name: its only subject alternative name may be the trust
// domain's SPIFFE ID (spiffe://<td>), or it has none. Any other URI, a
// DNS name, an e-mail address or an IP address is refused with an error
// wrapping ErrCSR and ErrCSRName. The subject is ignored.
func CheckCACSR(der []byte, td spiffeid.TrustDomain) (crypto.PublicKey, error) {
	pub, err := CheckCSR(der)
	if err != nil {
		return nil, err
	}
	// CheckCSR parsed it already; this cannot fail.
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCSR, err)
	}
	switch {
	case len(csr.URIs) > 1:
		return nil, fmt.Errorf("%w: %w: %d URI SANs (at most one, %s)", ErrCSR, ErrCSRName, len(csr.URIs), td.IDString())
	case len(csr.URIs) == 1 && csr.URIs[0].String() != td.IDString():
		return nil, fmt.Errorf("%w: %w: URI SAN is not %s", ErrCSR, ErrCSRName, td.IDString())
	case len(csr.DNSNames) > 0, len(csr.EmailAddresses) > 0, len(csr.IPAddresses) > 0:
		return nil, fmt.Errorf("%w: %w: a CA of %s names no DNS name, e-mail or IP address", ErrCSR, ErrCSRName, td.Name())
	}
	return pub, nil
}
