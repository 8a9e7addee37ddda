package federation

import (
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ErrBundle means a bundle is not acceptable for its trust domain.
var ErrBundle = errors.New("federation: bundle refused")

// CheckBundle refuses a bundle of td that holds no authority, or whose
// X.509 authorities carry a SPIFFE ID of another trust domain (a CA
// certificate may name its trust domain in a URI SAN; one naming another
// is a bundle served for the wrong trust domain).
func CheckBundle(td spiffeid.TrustDomain, b *spiffebundle.Bundle) error {
	if b.TrustDomain() != td {
		return fmt.Errorf("%w: bundle is of %s, not %s", ErrBundle, b.TrustDomain().Name(), td.Name())
	}
	if len(b.X509Authorities()) == 0 && len(b.JWTAuthorities()) == 0 {
		return fmt.Errorf("%w: bundle of %s holds no X.509 or JWT authority", ErrBundle, td.Name())
	}
	for _, cert := range b.X509Authorities() {
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
