package authz

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/jwtsvid"
)

// DefaultTokenCacheSize is the number of validated tokens a
// JWTAuthorizer remembers unless JWTConfig.TokenCacheSize says otherwise.
const DefaultTokenCacheSize = jwtsvid.DefaultVerifierSize

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
	cache    *jwtsvid.Verifier // nil when disabled
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
		a.cache = jwtsvid.NewVerifier(DefaultTokenCacheSize)
	case n > 0:
		a.cache = jwtsvid.NewVerifier(n)
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

// validate validates token with jwtsvid.Validate, or with the
// authorizer's jwtsvid.Verifier, which remembers the tokens that validated.
func (a *JWTAuthorizer) validate(token string) (spiffeid.ID, error) {
	now := a.clock.Now()
	var c *jwtsvid.Claims
	var err error
	if a.cache == nil {
		c, err = jwtsvid.Validate(token, a.bundles, a.audience, now)
	} else {
		c, err = a.cache.Validate(token, a.bundles, a.audience, now)
	}
	if err != nil {
		return spiffeid.ID{}, err
	}
	return c.ID, nil
}
