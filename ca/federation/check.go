package federation

import (
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ErrBundle means a bundle is not acceptable for its trust domain.
var ErrBundle = errors.New("federation: bundle refused")

// MaxRSAKeyBits bounds the RSA keys of a bundle, as crypto/tls bounds
// those of peers: every SVID a caller presents for the trust domain is
// verified with them, at a cost that grows with the square of their size.
const MaxRSAKeyBits = 8192

// CheckBundle refuses a bundle of td that holds no authority, whose
// X.509 authorities carry a SPIFFE ID of another trust domain (a CA
// certificate may name its trust domain in a URI SAN; one naming another
// is a bundle served for the wrong trust domain), whose JWT authorities
// are not all public keys (a private or a symmetric key), or that holds
// an RSA key longer than MaxRSAKeyBits.
func CheckBundle(td spiffeid.TrustDomain, b *spiffebundle.Bundle) error {
	if b.TrustDomain() != td {
		return fmt.Errorf("%w: bundle is of %s, not %s", ErrBundle, b.TrustDomain().Name(), td.Name())
	}
	if len(b.X509Authorities()) == 0 && len(b.JWTAuthorities()) == 0 {
		return fmt.Errorf("%w: bundle of %s holds no X.509 or JWT authority", ErrBundle, td.Name())
	}
	for kid, k := range b.JWTAuthorities() {
		// A JWK parses into a private or a symmetric key as readily as
		// into a public one: only a public key is an authority.
		if _, err := x509.MarshalPKIXPublicKey(k); err != nil {
			return fmt.Errorf("%w: JWT authority %q of the bundle of %s is not a public key (%T)", ErrBundle, kid, td.Name(), k)
		}
		if err := checkKeySize(k); err != nil {
			return fmt.Errorf("%w: JWT authority %q of the bundle of %s: %w", ErrBundle, kid, td.Name(), err)
		}
	}
	for _, cert := range b.X509Authorities() {
		if err := checkKeySize(cert.PublicKey); err != nil {
			return fmt.Errorf("%w: an X.509 authority of the bundle of %s: %w", ErrBundle, td.Name(), err)
		}
		for _, u := range cert.URIs {
			if u.Scheme != "spiffe" {
				continue
			}
			id, err := spiffeid.FromURI(u)
			if err != nil || id.TrustDomain() != td {
				return fmt.Errorf("%w: an X.509 authority of the bundle of %s names %s", ErrBundle, td.Name(), u.Redacted())
			}
		}
	}
	return nil
}

// checkKeySize refuses an RSA key longer than MaxRSAKeyBits.
func checkKeySize(k crypto.PublicKey) error {
	if r, ok := k.(*rsa.PublicKey); ok && r.N != nil && r.N.BitLen() > MaxRSAKeyBits {
		return fmt.Errorf("RSA key of %d bits (at most %d)", r.N.BitLen(), MaxRSAKeyBits)
	}
	return nil
}
