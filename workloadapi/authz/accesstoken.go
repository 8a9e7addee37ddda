package authz

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/jwtsvid"
)

// Errors of access-token authorization, besides ErrNoToken and
// ErrInvalidToken.
var (
	// ErrInsufficientScope: a valid access token whose scope lacks one
	// the resource requires. HTTP answers 403 with
	// error="insufficient_scope" (RFC 6750 §3.1); gRPC PermissionDenied.
	ErrInsufficientScope = errors.New("authz: insufficient scope")
	// ErrRevoked: the token is on the revocation list (wrapped in
	// ErrInvalidToken).
	ErrRevoked = errors.New("authz: token revoked")
	// ErrBinding: the token is bound to a client certificate (cnf
	// x5t#S256, RFC 8705) that is not the TLS client certificate of the
	// request, or the request has none (wrapped in ErrInvalidToken).
	ErrBinding = errors.New("authz: token not bound to this client certificate")
	// ErrForeignTrustDomain: the token's sub is outside the authorization
	// server's trust domain (AccessTokenConfig.TrustDomain), for instance
	// in a federated one (wrapped in ErrInvalidToken).
	ErrForeignTrustDomain = errors.New("authz: token subject outside the authorization server's trust domain")
)

// maxActDepth bounds the delegation chain (act claims nested in act
// claims) an access token may carry.
const maxActDepth = 16

// RevocationSource says whether a token was revoked: a
// *revocationapi.Client, which keeps the agent's list current, or the
// list itself. Revoked runs on every request and must be cheap and safe
// for concurrent use.
type RevocationSource interface {
	// Revoked reports whether a token of this jti, subject and client_id,
	// issued at issuedAt, is revoked.
	Revoked(jti, subject, clientID string, issuedAt time.Time) bool
}

// AccessTokenConfig configures an AccessTokenAuthorizer.
type AccessTokenConfig struct {
	// TrustDomain is the trust domain of the authorization server that
	// issues the tokens (required). Only tokens whose sub is in it are
	// accepted, and their keys are looked up only in its bundle: a
	// federated trust domain, whose bundle Bundles may also hold, cannot
	// sign access tokens this resource server accepts.
	TrustDomain spiffeid.TrustDomain
	// Bundles supplies the JWT authorities (required): the keys that sign
	// JWT-SVIDs sign access tokens too. Only TrustDomain's bundle is used.
	// Use go-spiffe's *workloadapi.BundleSource or *workloadapi.JWTSource.
	Bundles jwtbundle.Source
	// Audience lists the audiences of this resource server (required): a
	// token is valid if its aud holds one of them.
	Audience []string
	// Issuer, if set, is the only iss accepted.
	Issuer string
	// Scopes are the scopes every request must carry (all of them); see
	// also WithScopes.
	Scopes []string
	// Revocations, if set, refuses revoked tokens.
	Revocations RevocationSource
	// Clock tells the time for expiry checks; nil means the system clock.
	Clock Clock
	// Logger receives, at debug level, why requests were refused (never
	// the token). Nil discards.
	Logger *slog.Logger
	// TokenCacheSize bounds the validated tokens remembered, as for
	// JWTConfig. Zero means DefaultTokenCacheSize; negative disables the
	// cache.
	TokenCacheSize int
}

// AccessTokenAuthorizer authenticates requests by an OAuth 2.0 access
// token in the RFC 9068 JWT profile (as Writ's server issues them),
// validated locally: no request reaches the authorization server. See
// the package documentation for the rules.
type AccessTokenAuthorizer struct {
	td          spiffeid.TrustDomain
	bundles     jwtbundle.Source
	audience    []string
	issuer      string
	scopes      []string
	revocations RevocationSource
	clock       Clock
	log         *slog.Logger
	verifier    *jwtsvid.Verifier
}

// NewAccessTokenAuthorizer checks cfg and returns an AccessTokenAuthorizer.
func NewAccessTokenAuthorizer(cfg AccessTokenConfig) (*AccessTokenAuthorizer, error) {
	switch {
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("authz: AccessTokenConfig.TrustDomain is required")
	case cfg.Bundles == nil:
		return nil, errors.New("authz: AccessTokenConfig.Bundles is required")
	case len(cfg.Audience) == 0:
		return nil, errors.New("authz: AccessTokenConfig.Audience is required")
	case slices.Contains(cfg.Audience, ""):
		return nil, errors.New("authz: AccessTokenConfig.Audience holds an empty audience")
	}
	if err := checkScopes(cfg.Scopes); err != nil {
		return nil, err
	}
	a := &AccessTokenAuthorizer{
		td:          cfg.TrustDomain,
		bundles:     trustDomainBundle{td: cfg.TrustDomain, src: cfg.Bundles},
		audience:    slices.Clone(cfg.Audience),
		issuer:      cfg.Issuer,
		scopes:      slices.Clone(cfg.Scopes),
		revocations: cfg.Revocations,
		clock:       cfg.Clock,
		log:         cfg.Logger,
	}
	if a.clock == nil {
		a.clock = systemClock{}
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	n := cfg.TokenCacheSize
	if n == 0 {
		n = DefaultTokenCacheSize
	}
	if n > 0 {
		a.verifier = jwtsvid.NewAccessTokenVerifier(n)
	}
	return a, nil
}

// trustDomainBundle is a jwtbundle.Source holding only td's bundle of
// src: the authorization server's keys, never a federated trust
// domain's.
type trustDomainBundle struct {
	td  spiffeid.TrustDomain
	src jwtbundle.Source
}

func (b trustDomainBundle) GetJWTBundleForTrustDomain(td spiffeid.TrustDomain) (*jwtbundle.Bundle, error) {
	if td != b.td {
		return nil, fmt.Errorf("%w: trust domain %q is not the authorization server's", ErrForeignTrustDomain, td)
	}
	return b.src.GetJWTBundleForTrustDomain(td)
}

func checkScopes(scopes []string) error {
	for _, s := range scopes {
		if s == "" || strings.ContainsAny(s, " \t\r\n\"\\") {
			return fmt.Errorf("authz: invalid scope %q", s)
		}
	}
	return nil
}

// WithScopes returns an authorizer that requires scopes instead of the
// configured ones, sharing everything else (the token cache included):
// one per route that needs its own scopes. It panics on a scope that is
// empty or holds a space or a quote (a programming error).
func (a *AccessTokenAuthorizer) WithScopes(scopes ...string) *AccessTokenAuthorizer {
	if err := checkScopes(scopes); err != nil {
		panic(err)
	}
	b := *a
	b.scopes = slices.Clone(scopes)
	return &b
}

// AccessToken is a validated access token, as the middleware puts it in
// the request context (AccessTokenFrom).
type AccessToken struct {
	// Subject is sub: the SPIFFE ID the token speaks for.
	Subject spiffeid.ID
	// ClientID is client_id: the client the token was issued to (a
	// SPIFFE ID for Writ's server).
	ClientID string
	// Scopes are the scope claim's scopes, in order.
	Scopes []string
	// Audience is aud, as a list.
	Audience []string
	// Issuer is iss ("" if absent).
	Issuer string
	// JTI is jti.
	JTI string
	// IssuedAt and Expiry are iat and exp.
	IssuedAt, Expiry time.Time
	// Actor is the act claim (RFC 8693): the party acting on the
	// subject's behalf, with the one acting for it in turn; nil if none.
	Actor *Actor
	// Bound reports that the token was bound to the client certificate
	// of the request (cnf x5t#S256) and that it matched.
	Bound bool
}

// Actor is one link of an access token's delegation chain (act claim).
type Actor struct {
	// Subject is the actor's sub.
	Subject string
	// ClientID is the actor's client_id, if given.
	ClientID string
	// Actor is who acted for this actor, if anyone.
	Actor *Actor
}

// HasScope reports whether t carries scope.
func (t *AccessToken) HasScope(scope string) bool { return slices.Contains(t.Scopes, scope) }

type accessTokenKey struct{}

// AccessTokenFrom returns the access token the middleware or interceptors
// validated for this request.
func AccessTokenFrom(ctx context.Context) (*AccessToken, bool) {
	t, ok := ctx.Value(accessTokenKey{}).(*AccessToken)
	return t, ok && t != nil
}

// WithAccessToken returns a copy of ctx carrying t, as the middleware
// does (the caller's ID goes in too, for CallerID); for tests of
// handlers.
func WithAccessToken(ctx context.Context, t *AccessToken) context.Context {
	return context.WithValue(WithCallerID(ctx, t.Subject), accessTokenKey{}, t)
}

// Authenticate parses an Authorization value ("Bearer <token>") and
// validates the access token for a request whose TLS client certificate
// is peer (nil without one). It returns the token, or an error wrapping
// ErrNoToken, ErrInvalidToken (itself wrapping the jwtsvid sentinel,
// ErrRevoked or ErrBinding) or ErrInsufficientScope (then with the
// token). It makes no network call.
func (a *AccessTokenAuthorizer) Authenticate(authorization string, peer *x509.Certificate) (*AccessToken, error) {
	token, err := ParseBearer(authorization)
	if err != nil {
		return nil, err
	}
	t, err := a.validate(token, peer)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	for _, s := range a.scopes {
		if !t.HasScope(s) {
			return t, fmt.Errorf("%w: %q required", ErrInsufficientScope, s)
		}
	}
	return t, nil
}

// validate runs every check but the scopes.
func (a *AccessTokenAuthorizer) validate(token string, peer *x509.Certificate) (*AccessToken, error) {
	now := a.clock.Now()
	var (
		c   *jwtsvid.Claims
		err error
	)
	// The bundle source answers only for a.td; the check after
	// validation says so again, whatever the source did.
	if a.verifier != nil {
		c, err = a.verifier.Validate(token, a.bundles, a.audience, now)
	} else {
		c, err = jwtsvid.ValidateAccessToken(token, a.bundles, a.audience, now)
	}
	if err != nil {
		return nil, err
	}
	if c.ID.TrustDomain() != a.td {
		return nil, fmt.Errorf("%w: sub in %q", ErrForeignTrustDomain, c.ID.TrustDomain())
	}
	t := &AccessToken{Subject: c.ID, Audience: c.Audience, IssuedAt: c.IssuedAt, Expiry: c.Expiry}
	var ok bool
	if t.Issuer, ok = optionalString(c.Raw, "iss"); !ok {
		return nil, fmt.Errorf("%w: iss is not a string", jwtsvid.ErrClaims)
	}
	if a.issuer != "" && t.Issuer != a.issuer {
		return nil, fmt.Errorf("%w: iss %q, want %q", jwtsvid.ErrClaims, t.Issuer, a.issuer)
	}
	if t.ClientID, ok = optionalString(c.Raw, "client_id"); !ok || t.ClientID == "" {
		return nil, fmt.Errorf("%w: no client_id", jwtsvid.ErrClaims)
	}
	if t.JTI, ok = optionalString(c.Raw, "jti"); !ok || t.JTI == "" {
		return nil, fmt.Errorf("%w: no jti", jwtsvid.ErrClaims)
	}
	if t.IssuedAt.IsZero() {
		return nil, fmt.Errorf("%w: no iat", jwtsvid.ErrClaims)
	}
	scope, ok := optionalString(c.Raw, "scope")
	if !ok {
		return nil, fmt.Errorf("%w: scope is not a string", jwtsvid.ErrClaims)
	}
	t.Scopes = strings.Fields(scope)
	if t.Actor, err = actorClaim(c.Raw["act"], 0); err != nil {
		return nil, err
	}
	if t.Bound, err = checkBinding(c.Raw["cnf"], peer); err != nil {
		return nil, err
	}
	if a.revoked(t, c.ID.String()) {
		return nil, ErrRevoked
	}
	return t, nil
}

// revoked reports whether the revocation list covers t: its jti, or a
// revoked client named as its subject, its client or any actor of its
// delegation chain, as the authorization server decides.
func (a *AccessTokenAuthorizer) revoked(t *AccessToken, subject string) bool {
	if a.revocations == nil {
		return false
	}
	if a.revocations.Revoked(t.JTI, subject, t.ClientID, t.IssuedAt) {
		return true
	}
	for act := t.Actor; act != nil; act = act.Actor {
		if a.revocations.Revoked("", act.Subject, act.ClientID, t.IssuedAt) {
			return true
		}
	}
	return false
}

// optionalString returns claim name of raw: "" and true if absent, false
// if it is not a string.
func optionalString(raw map[string]any, name string) (string, bool) {
	v, present := raw[name]
	if !present {
		return "", true
	}
	s, ok := v.(string)
	return s, ok
}

// actorClaim decodes an act claim (nil if absent).
func actorClaim(v any, depth int) (*Actor, error) {
	if v == nil {
		return nil, nil
	}
	if depth >= maxActDepth {
		return nil, fmt.Errorf("%w: act nested deeper than %d", jwtsvid.ErrClaims, maxActDepth)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%w: act is not an object", jwtsvid.ErrClaims)
	}
	act := &Actor{}
	if act.Subject, ok = optionalString(m, "sub"); !ok || act.Subject == "" {
		return nil, fmt.Errorf("%w: act without sub", jwtsvid.ErrClaims)
	}
	if act.ClientID, ok = optionalString(m, "client_id"); !ok {
		return nil, fmt.Errorf("%w: act client_id is not a string", jwtsvid.ErrClaims)
	}
	var err error
	if act.Actor, err = actorClaim(m["act"], depth+1); err != nil {
		return nil, err
	}
	return act, nil
}

// checkBinding checks a cnf claim against the TLS client certificate:
// without cnf any request may present the token (bound false); with one,
// it must hold x5t#S256, the SHA-256 of peer's DER in base64url, and
// peer must be that certificate. A confirmation method this package
// does not know is refused, as it cannot be checked.
func checkBinding(cnf any, peer *x509.Certificate) (bool, error) {
	if cnf == nil {
		return false, nil
	}
	m, ok := cnf.(map[string]any)
	if !ok {
		return false, fmt.Errorf("%w: cnf is not an object", ErrBinding)
	}
	want, ok := m["x5t#S256"].(string)
	if !ok || len(m) != 1 {
		return false, fmt.Errorf("%w: cnf holds no x5t#S256, or other confirmation methods", ErrBinding)
	}
	if peer == nil {
		return false, fmt.Errorf("%w: no client certificate", ErrBinding)
	}
	sum := sha256.Sum256(peer.Raw)
	var got [43]byte // base64url of 32 bytes, unpadded
	base64.RawURLEncoding.Encode(got[:], sum[:])
	if subtle.ConstantTimeCompare(got[:], []byte(want)) != 1 {
		return false, fmt.Errorf("%w: another client certificate", ErrBinding)
	}
	return true, nil
}
