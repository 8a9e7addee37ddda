package x509ca

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Errors callers branch on. Every error this package returns for bad input
// wraps one of these; key-policy failures in CheckCSR wrap both ErrCSR and
// ErrKeyPolicy, and in SignX509SVID both ErrParams and ErrKeyPolicy.
// Failures of the signer itself (such as a KMS error) wrap no sentinel.
var (
	// ErrIssuerExpired: now is not before the issuer's NotAfter.
	ErrIssuerExpired = errors.New("x509ca: issuer expired")
	// ErrIssuerNotYetValid: now is before the issuer's NotBefore.
	ErrIssuerNotYetValid = errors.New("x509ca: issuer not yet valid")
	// ErrIssuer: the issuer is missing parts or is not a signing CA.
	ErrIssuer = errors.New("x509ca: invalid issuer")
	// ErrCSR is wrapped by every CSR rejection.
	ErrCSR = errors.New("x509ca: CSR refused")
	// ErrKeyPolicy: a key's type, size or parameters are not allowed.
	ErrKeyPolicy = errors.New("x509ca: key not allowed")
	// ErrParams: invalid arguments (SVID parameters, CA parameters, zero time).
	ErrParams = errors.New("x509ca: invalid parameters")
	// ErrKeyType: an unknown key type name.
	ErrKeyType = errors.New("x509ca: unknown key type")
	// ErrNotSVID: a certificate chain does not follow the X.509-SVID profile.
	ErrNotSVID = errors.New("x509ca: not an X.509-SVID")
	// ErrUntrusted: a certificate chain does not verify to the given roots.
	ErrUntrusted = errors.New("x509ca: certificate not trusted")
)

// Backdate is how far NotBefore is set before the signing time, against
// clock skew between the CA and relying parties. A leaf's NotBefore is
// never earlier than its issuer's.
const Backdate = 30 * time.Second

// Organization is the subject O of every certificate Writ issues.
const Organization = "Writ"

// Issuer is a CA that signs: its certificate and its key. Signer may be a
// KMS or HSM key; it must match Cert's public key.
type Issuer struct {
	Cert   *x509.Certificate
	Signer crypto.Signer
	// Chain is what every certificate this issuer signs is sent with,
	// after the leaf: the certificates from Cert up to, not including, the
	// trust anchor. It is empty when Cert is itself the trust anchor (a
	// self-signed CA); otherwise it starts with Cert.
	Chain []*x509.Certificate
}

// SVIDChain returns leaf (a DER certificate this issuer signed) followed
// by the issuer's chain: the X.509-SVID chain to send, leaf first, without
// the trust anchor.
func (i *Issuer) SVIDChain(leaf []byte) [][]byte {
	out := make([][]byte, 0, 1+len(i.Chain))
	out = append(out, leaf)
	for _, c := range i.Chain {
		out = append(out, c.Raw)
	}
	return out
}

// NewSelfSignedCA makes a self-signed CA certificate for trust domain td,
// valid from now-Backdate to now+ttl, with signer's key. The certificate
// has the CA flag without a path length limit (so downstream CAs can chain
// below it), KeyUsage keyCertSign|cRLSign (critical), the URI SAN
// spiffe://<td>, a SubjectKeyId derived from the public key, a random
// 128-bit serial number, and Subject O=Writ, serialNumber=<serial> so
// successive CAs have distinct subjects.
func NewSelfSignedCA(now time.Time, td spiffeid.TrustDomain, signer crypto.Signer, ttl time.Duration) (*x509.Certificate, error) {
	switch {
	case now.IsZero():
		return nil, fmt.Errorf("%w: zero time", ErrParams)
	case td.IsZero():
		return nil, fmt.Errorf("%w: no trust domain", ErrParams)
	case signer == nil:
		return nil, fmt.Errorf("%w: no signer", ErrParams)
	case ttl <= 0:
		return nil, fmt.Errorf("%w: CA TTL %v is not positive", ErrParams, ttl)
	}
	pub := signer.Public()
	bits, err := publicKeyBits(pub)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{Organization},
			SerialNumber: serial.String(),
		},
		NotBefore:             now.Add(-Backdate).Truncate(time.Second),
		NotAfter:              now.Add(ttl).Truncate(time.Second),
		BasicConstraintsValid: true,
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{td.ID().URL()},
		SubjectKeyId:          subjectKeyID(bits),
	}
	if !tmpl.NotAfter.After(now) {
		return nil, fmt.Errorf("%w: CA TTL %v is too short", ErrParams, ttl)
	}
	return createCA(tmpl, tmpl, pub, signer)
}

// SignCA makes a CA certificate for trust domain td and public key pub,
// signed by iss: an intermediate CA below an upstream one. The profile is
// NewSelfSignedCA's, with AuthorityKeyId = the issuer's SubjectKeyId; the
// validity is capped at the issuer's, as for a leaf. It returns
// ErrIssuerExpired or ErrIssuerNotYetValid if iss is not valid at now.
func SignCA(now time.Time, td spiffeid.TrustDomain, pub crypto.PublicKey, iss *Issuer, ttl time.Duration) (*x509.Certificate, error) {
	switch {
	case now.IsZero():
		return nil, fmt.Errorf("%w: zero time", ErrParams)
	case td.IsZero():
		return nil, fmt.Errorf("%w: no trust domain", ErrParams)
	case ttl <= 0:
		return nil, fmt.Errorf("%w: CA TTL %v is not positive", ErrParams, ttl)
	case iss == nil || iss.Cert == nil || iss.Signer == nil:
		return nil, fmt.Errorf("%w: missing certificate or signer", ErrIssuer)
	}
	ic := iss.Cert
	switch {
	case !ic.BasicConstraintsValid || !ic.IsCA || ic.KeyUsage&x509.KeyUsageCertSign == 0:
		return nil, fmt.Errorf("%w: certificate is not a signing CA", ErrIssuer)
	case !now.Before(ic.NotAfter):
		return nil, fmt.Errorf("%w: at %s (NotAfter %s)", ErrIssuerExpired, now.UTC().Format(time.RFC3339), ic.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(ic.NotBefore):
		return nil, fmt.Errorf("%w: at %s (NotBefore %s)", ErrIssuerNotYetValid, now.UTC().Format(time.RFC3339), ic.NotBefore.UTC().Format(time.RFC3339))
	}
	if err := checkIssuerDomain(ic, td); err != nil {
		return nil, err
	}
	bits, err := publicKeyBits(pub)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{Organization},
			SerialNumber: serial.String(),
		},
		NotBefore:             now.Add(-Backdate).Truncate(time.Second),
		NotAfter:              now.Add(ttl).Truncate(time.Second),
		BasicConstraintsValid: true,
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{td.ID().URL()},
		SubjectKeyId:          subjectKeyID(bits),
		AuthorityKeyId:        ic.SubjectKeyId,
	}
	if tmpl.NotBefore.Before(ic.NotBefore) {
		tmpl.NotBefore = ic.NotBefore
	}
	if tmpl.NotAfter.After(ic.NotAfter) {
		tmpl.NotAfter = ic.NotAfter
	}
	if !tmpl.NotAfter.After(now) {
		return nil, fmt.Errorf("%w: CA TTL %v is too short", ErrParams, ttl)
	}
	return createCA(tmpl, ic, pub, iss.Signer)
}

func createCA(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("x509ca: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("x509ca: parse CA certificate: %w", err)
	}
	return cert, nil
}

// newSerial returns a random, positive, non-zero 128-bit serial number.
func newSerial() (*big.Int, error) {
	var b [16]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("x509ca: serial number: %w", err)
		}
		if n := new(big.Int).SetBytes(b[:]); n.Sign() > 0 {
			return n, nil
		}
	}
}
