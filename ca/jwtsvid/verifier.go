package jwtsvid

import (
	"crypto"
	"crypto/sha256"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultVerifierSize is the number of verified tokens a Verifier keeps
// unless told otherwise.
const DefaultVerifierSize = 4096

// Verifier validates JWT-SVIDs exactly as Validate does, and remembers
// the tokens that validated, by the SHA-256 of their exact bytes. Clients
// present the same JWT-SVID until it is half spent, so a repeated token
// then costs a hash, a map lookup and the checks whose outcome can change
// instead of a signature verification. A token seen for the first time is
// decoded once and verified on the decoded parts, as Validate does.
//
// A remembered token is accepted again only if the key that verified it
// is still, unchanged, in the JWT bundle of its subject's trust domain
// under the same kid (dropping a key from the bundle invalidates its
// tokens at once); exp, nbf, iat (with Leeway) and the audience are
// checked on every call. Signature, header and subject cannot change for
// the same bytes. Invalid tokens are never remembered, so a flood of bad
// tokens costs full validations, as without a Verifier. A Verifier is safe
// for concurrent use.
type Verifier struct {
	max int
	// access: the tokens validated are OAuth access tokens (see
	// NewAccessTokenVerifier), not JWT-SVIDs.
	access bool

	mu   sync.RWMutex // guards seen
	seen map[[sha256.Size]byte]*verified
}

type verified struct {
	claims *Claims
	key    crypto.PublicKey // the key that verified the signature
}

// NewVerifier returns a Verifier that remembers up to size tokens
// (DefaultVerifierSize if size <= 0). When full, it forgets expired
// tokens first, then an arbitrary eighth of them.
func NewVerifier(size int) *Verifier {
	if size <= 0 {
		size = DefaultVerifierSize
	}
	return &Verifier{max: size, seen: make(map[[sha256.Size]byte]*verified)}
}

// Validate validates token like the package-level Validate, with the same
// errors. The returned Claims may be shared between calls: callers must
// not modify them.
func (v *Verifier) Validate(token string, bundles BundleSource, audience []string, now time.Time) (*Claims, error) {
	if err := checkArgs(bundles, audience, now); err != nil {
		return nil, err
	}
	if len(token) > MaxTokenSize {
		return nil, fmt.Errorf("%w: %d bytes (limit %d)", ErrTooLarge, len(token), MaxTokenSize)
	}
	sum := sha256.Sum256([]byte(token))
	v.mu.RLock()
	hit := v.seen[sum]
	v.mu.RUnlock()
	if hit != nil {
		if sameKey(bundles, hit.claims.ID.TrustDomain(), hit.claims.KeyID, hit.key) {
			if err := checkTimes(hit.claims, now); err != nil {
				v.forget(sum)
				return nil, err
			}
			if err := checkAudience(hit.claims, audience); err != nil {
				return nil, err
			}
			return hit.claims, nil
		}
		v.forget(sum) // the key left the bundle or changed: validate afresh
	}

	t, err := parseAs(token, v.access)
	if err != nil {
		return nil, err
	}
	key, err := t.findKey(bundles)
	if err != nil {
		return nil, err
	}
	if err := t.verify(key); err != nil {
		return nil, err
	}
	c, err := t.checkClaims(now, audience, true)
	if err != nil {
		return nil, err
	}
	if _, ok := key.(interface{ Equal(crypto.PublicKey) bool }); ok {
		v.remember(sum, &verified{claims: c, key: key}, now)
	}
	return c, nil
}

// Len returns the number of tokens v remembers.
func (v *Verifier) Len() int {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return len(v.seen)
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

// remember adds e. When full it first drops expired tokens, then, if
// fewer than an eighth of the places are free, arbitrary tokens (map
// order) until an eighth are: every scan of the map frees room for at
// least max/8 insertions, so that its cost is spread over them.
func (v *Verifier) remember(sum [sha256.Size]byte, e *verified, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.seen[sum]; !ok && len(v.seen) >= v.max {
		for k, old := range v.seen {
			if !now.Before(old.claims.Expiry.Add(Leeway)) {
				delete(v.seen, k)
			}
		}
		keep := v.max - max(1, v.max/8)
		for k := range v.seen {
			if len(v.seen) <= keep {
				break
			}
			delete(v.seen, k)
		}
	}
	v.seen[sum] = e
}

func (v *Verifier) forget(sum [sha256.Size]byte) {
	v.mu.Lock()
	delete(v.seen, sum)
	v.mu.Unlock()
}
