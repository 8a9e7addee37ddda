package jwtsvid

import (
	"crypto"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultVerifierSize is the number of verified tokens a Verifier keeps
// unless told otherwise.
const DefaultVerifierSize = 4096

// Verifier validates JWT-SVIDs exactly as Validate does, and remembers
// the tokens whose signature it has verified. Clients present the same
// JWT-SVID until it is half spent, so a repeated token then costs a map
// lookup and the expiry and audience checks instead of a signature
// verification.
//
// A remembered token is accepted again only if it is the same string
// byte for byte and the key that verified it is still, unchanged, in the
// JWT bundle of its subject's trust domain; expiry, not-before and
// audience are checked on every call. A Verifier is safe for concurrent
// use.
type Verifier struct {
	max int

	mu   sync.Mutex // guards seen
	seen map[string]*verified
}

type verified struct {
	claims *Claims
	key    crypto.PublicKey
}

// NewVerifier returns a Verifier that remembers up to size tokens
// (DefaultVerifierSize if size <= 0).
func NewVerifier(size int) *Verifier {
	if size <= 0 {
		size = DefaultVerifierSize
	}
	return &Verifier{max: size, seen: make(map[string]*verified)}
}

// Validate validates token like the package-level Validate. The returned
// Claims may be shared between calls: callers must not modify them.
func (v *Verifier) Validate(token string, bundles BundleSource, audience []string, now time.Time) (*Claims, error) {
	v.mu.Lock()
	hit := v.seen[token]
	v.mu.Unlock()
	if hit != nil && bundles != nil && len(audience) > 0 && !slices.Contains(audience, "") && !now.IsZero() {
		if sameKey(bundles, hit.claims.ID.TrustDomain(), hit.claims.KeyID, hit.key) {
			if err := checkTimes(hit.claims, now); err != nil {
				v.forget(token)
				return nil, err
			}
			if err := checkAudience(hit.claims, audience); err != nil {
				return nil, err
			}
			return hit.claims, nil
		}
		v.forget(token) // the key left the bundle or changed: validate afresh
	}
	c, err := Validate(token, bundles, audience, now)
	if err != nil {
		return nil, err
	}
	b, err := bundles.GetJWTBundleForTrustDomain(c.ID.TrustDomain())
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeyNotFound, err)
	}
	key, ok := b.FindJWTAuthority(c.KeyID)
	if !ok {
		return nil, fmt.Errorf("%w: key %q left the bundle", ErrKeyNotFound, c.KeyID)
	}
	v.remember(token, &verified{claims: c, key: key}, now)
	return c, nil
}

func sameKey(bundles BundleSource, td spiffeid.TrustDomain, kid string, key crypto.PublicKey) bool {
	b, err := bundles.GetJWTBundleForTrustDomain(td)
	if err != nil || b == nil || b.TrustDomain() != td {
		return false
	}
	cur, ok := b.FindJWTAuthority(kid)
	if !ok {
		return false
	}
	eq, ok := cur.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(key)
}

func (v *Verifier) remember(token string, e *verified, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.seen) >= v.max {
		for t, old := range v.seen {
			if checkTimes(old.claims, now) != nil {
				delete(v.seen, t)
			}
		}
		// Still full: forget an arbitrary half.
		for t := range v.seen {
			if len(v.seen) < v.max/2 {
				break
			}
			delete(v.seen, t)
		}
	}
	v.seen[token] = e
}

func (v *Verifier) forget(token string) {
	v.mu.Lock()
	delete(v.seen, token)
	v.mu.Unlock()
}
