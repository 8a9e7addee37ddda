package authz

import (
	"crypto"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/jwtsvid"
)

// DefaultTokenCacheSize is the number of validated tokens a
// JWTAuthorizer remembers unless JWTConfig.TokenCacheSize says otherwise.
const DefaultTokenCacheSize = 4096

// JWTConfig configures a JWTAuthorizer.
type JWTConfig struct {
	// Bundles supplies the JWT authorities by trust domain (required):
	// go-spiffe's *workloadapi.JWTSource or *workloadapi.BundleSource,
	// which keep the bundles current from the Workload API's stream, so
	// that no request causes a network call.
	Bundles jwtbundle.Source
	// Audience lists the audiences this service accepts (required): a
	// token is valid if its aud holds one of them.
	Audience []string
	// Policy decides which validated callers are allowed (required).
	Policy Policy
	// Clock tells the time for expiry checks; nil means the system clock.
	Clock Clock
	// Logger receives, at debug level, why requests were refused (never
	// the token). Nil discards.
	Logger *slog.Logger
	// TokenCacheSize bounds the validated tokens remembered (see the
	// package documentation). Zero means DefaultTokenCacheSize; negative
	// disables the cache, so that every request validates its token in
	// full.
	TokenCacheSize int
}

// JWTAuthorizer authenticates callers by the JWT-SVID in their
// Authorization header (HTTP) or authorization metadata (gRPC), validated
// locally, and authorizes them by a Policy.
type JWTAuthorizer struct {
	bundles  jwtbundle.Source
	audience []string
	policy   Policy
	clock    Clock
	log      *slog.Logger
	cache    *tokenCache // nil when disabled
}

// NewJWTAuthorizer checks cfg and returns a JWTAuthorizer.
func NewJWTAuthorizer(cfg JWTConfig) (*JWTAuthorizer, error) {
	switch {
	case cfg.Bundles == nil:
		return nil, errors.New("authz: JWTConfig.Bundles is required")
	case len(cfg.Audience) == 0:
		return nil, errors.New("authz: JWTConfig.Audience is required")
	case slices.Contains(cfg.Audience, ""):
		return nil, errors.New("authz: JWTConfig.Audience holds an empty audience")
	case cfg.Policy == nil:
		return nil, errors.New("authz: JWTConfig.Policy is required")
	}
	a := &JWTAuthorizer{
		bundles:  cfg.Bundles,
		audience: slices.Clone(cfg.Audience),
		policy:   cfg.Policy,
		clock:    cfg.Clock,
		log:      cfg.Logger,
	}
	if a.clock == nil {
		a.clock = systemClock{}
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	switch n := cfg.TokenCacheSize; {
	case n == 0:
		a.cache = newTokenCache(DefaultTokenCacheSize)
	case n > 0:
		a.cache = newTokenCache(n)
	}
	return a, nil
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Authenticate parses an Authorization value ("Bearer <JWT-SVID>"),
// validates the token and authorizes its subject. It returns the caller's
// SPIFFE ID, or an error wrapping ErrNoToken, ErrInvalidToken or
// ErrNotAllowed; with ErrNotAllowed it also returns the authenticated ID
// that the policy refused. It makes no network call.
func (a *JWTAuthorizer) Authenticate(authorization string) (spiffeid.ID, error) {
	token, err := ParseBearer(authorization)
	if err != nil {
		return spiffeid.ID{}, err
	}
	id, err := a.validate(token)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	if err := allows(a.policy, id); err != nil {
		return id, err
	}
	return id, nil
}

// validate validates token with jwtsvid.Validate, or finds it in the
// cache of tokens validated before and still valid now.
func (a *JWTAuthorizer) validate(token string) (spiffeid.ID, error) {
	now := a.clock.Now()
	if a.cache == nil {
		c, err := jwtsvid.Validate(token, a.bundles, a.audience, now)
		if err != nil {
			return spiffeid.ID{}, err
		}
		return c.ID, nil
	}
	sum := sha256.Sum256([]byte(token))
	if v := a.cache.get(sum); v != nil {
		if v.stillValid(now, a.bundles) {
			return v.id, nil
		}
		a.cache.remove(sum)
	}
	rec := &recordingSource{src: a.bundles}
	c, err := jwtsvid.Validate(token, rec, a.audience, now)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if key := rec.keyOf(c); key != nil {
		a.cache.put(sum, &verdict{id: c.ID, kid: c.KeyID, key: key, exp: c.Expiry, nbf: c.NotBefore, iat: c.IssuedAt}, now)
	}
	return c.ID, nil
}

// recordingSource remembers the bundle it gave Validate, so that the key
// cached with a verdict is the very key that verified the token, even if
// the source changes meanwhile.
type recordingSource struct {
	src    jwtbundle.Source
	bundle *jwtbundle.Bundle
}

func (r *recordingSource) GetJWTBundleForTrustDomain(td spiffeid.TrustDomain) (*jwtbundle.Bundle, error) {
	b, err := r.src.GetJWTBundleForTrustDomain(td)
	r.bundle = b
	return b, err
}

// keyOf returns the key that verified c, or nil if it cannot be compared
// with later bundles' keys (then c is not cached).
func (r *recordingSource) keyOf(c *jwtsvid.Claims) crypto.PublicKey {
	if r.bundle == nil || r.bundle.TrustDomain() != c.ID.TrustDomain() {
		return nil
	}
	key, ok := r.bundle.FindJWTAuthority(c.KeyID)
	if !ok {
		return nil
	}
	if _, ok := key.(interface{ Equal(crypto.PublicKey) bool }); !ok {
		return nil
	}
	return key
}

// verdict is what a successful validation established about a token.
type verdict struct {
	id            spiffeid.ID
	kid           string
	key           crypto.PublicKey // the key that verified the signature
	exp, nbf, iat time.Time
}

// stillValid repeats, at now, the checks of jwtsvid.Validate whose
// outcome can change after a token validated: the time claims, and that
// the key that verified it is still in the bundle of the subject's trust
// domain under the same kid (a key removed from the bundle, as when a
// compromised key is dropped, invalidates every token it signed). The
// signature, header, subject and audience cannot change: the cache is
// keyed by the token's exact bytes, and the audience is the authorizer's.
func (v *verdict) stillValid(now time.Time, bundles jwtbundle.Source) bool {
	if !now.Before(v.exp.Add(jwtsvid.Leeway)) || v.nbf.After(now.Add(jwtsvid.Leeway)) || v.iat.After(now.Add(jwtsvid.Leeway)) {
		return false
	}
	b, err := bundles.GetJWTBundleForTrustDomain(v.id.TrustDomain())
	if err != nil || b == nil || b.TrustDomain() != v.id.TrustDomain() {
		return false
	}
	key, ok := b.FindJWTAuthority(v.kid)
	if !ok {
		return false
	}
	eq, ok := key.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(v.key)
}

// tokenCache remembers verdicts by the SHA-256 of the token. Only tokens
// that validated in full are put in it.
type tokenCache struct {
	max int

	mu sync.RWMutex // guards m
	m  map[[sha256.Size]byte]*verdict
}

func newTokenCache(max int) *tokenCache {
	return &tokenCache{max: max, m: make(map[[sha256.Size]byte]*verdict)}
}

func (c *tokenCache) get(sum [sha256.Size]byte) *verdict {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.m[sum]
}

func (c *tokenCache) remove(sum [sha256.Size]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, sum)
}

// put adds v. When the cache is full it first drops expired verdicts,
// then, if still full, an arbitrary eighth of them (map order), so that
// the cost of making room is spread over many insertions.
func (c *tokenCache) put(sum [sha256.Size]byte, v *verdict, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[sum]; !ok && len(c.m) >= c.max {
		for k, old := range c.m {
			if !now.Before(old.exp.Add(jwtsvid.Leeway)) {
				delete(c.m, k)
			}
		}
		drop := len(c.m) - c.max + 1
		if drop > 0 {
			drop = max(drop, c.max/8)
			for k := range c.m {
				if drop == 0 {
					break
				}
				delete(c.m, k)
				drop--
			}
		}
	}
	c.m[sum] = v
}

// len returns the number of verdicts (for tests).
func (c *tokenCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}
