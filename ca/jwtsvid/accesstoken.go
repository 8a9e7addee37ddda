package jwtsvid

import (
	"encoding/json"
	"fmt"
	"time"
)

// AccessTokenType is the typ header of OAuth 2.0 access tokens in JWT
// form (RFC 9068). Validate refuses tokens with it, and
// ValidateAccessToken refuses tokens without it, so that a JWT-SVID and
// an access token can never stand in for each other.
const AccessTokenType = "at+jwt"

// SignAccessToken signs claims, a JSON object the caller has built (with
// sub, aud, exp and the other claims of RFC 9068), with key as a compact
// JWS whose header is alg, kid and typ "at+jwt". It checks nothing of the
// claims but their size: the caller bounds exp by the key's validity.
func SignAccessToken(key Key, claims []byte) (string, error) {
	switch {
	case !json.Valid(claims) || len(claims) == 0 || claims[0] != '{':
		return "", fmt.Errorf("%w: claims are not a JSON object", ErrInvalid)
	}
	s, err := newSigner(key, AccessTokenType)
	if err != nil {
		return "", err
	}
	token, err := s.signCompact(claims)
	if err != nil {
		return "", err
	}
	if len(token) > MaxTokenSize {
		return "", fmt.Errorf("%w: token of %d bytes exceeds %d", ErrInvalid, len(token), MaxTokenSize)
	}
	return token, nil
}

// ValidateAccessToken validates an OAuth access token as Validate does a
// JWT-SVID (the same steps, keys and errors), except that the typ header
// must be "at+jwt" or "application/at+jwt" (ErrHeader), and that a nil
// audience accepts any aud (for an authorization server introspecting
// its own tokens). Claims.Raw holds every claim (scope, client_id, jti,
// cnf, act...), for the caller to check.
func ValidateAccessToken(token string, bundles BundleSource, audience []string, now time.Time) (*Claims, error) {
	if audience != nil {
		if err := checkArgs(bundles, audience, now); err != nil {
			return nil, err
		}
	} else if bundles == nil || now.IsZero() {
		return nil, fmt.Errorf("%w: no bundle source or zero time", ErrInvalid)
	}
	t, err := parseAs(token, true)
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
	return t.checkClaims(now, audience, true)
}

// NewAccessTokenVerifier returns a Verifier of OAuth 2.0 access tokens:
// it validates exactly as ValidateAccessToken does (typ at+jwt or
// application/at+jwt required, so that no JWT-SVID passes as an access
// token), and remembers up to size tokens as NewVerifier does. The
// audience passed to Validate must not be empty.
func NewAccessTokenVerifier(size int) *Verifier {
	v := NewVerifier(size)
	v.access = true
	return v
}
