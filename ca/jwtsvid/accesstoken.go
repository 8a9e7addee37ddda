package jwtsvid

import "errors"

// AccessTokenType is the typ header of OAuth 2.0 access tokens in JWT
// form (RFC 9068 §2.1).
const AccessTokenType = "at+jwt"

// ErrType: an access token whose typ header is missing or not at+jwt
// (a JWT-SVID, an ID token...), or a JWT-SVID whose typ is at+jwt.
var ErrType = errors.New("jwtsvid: wrong token type")

// profile is the kind of token a validation accepts.
type profile uint8

const (
	// profileSVID: a JWT-SVID; typ absent, JWT or JOSE.
	profileSVID profile = iota
	// profileAccessToken: an RFC 9068 access token; typ at+jwt (or
	// application/at+jwt) required.
	profileAccessToken
)

// NewAccessTokenVerifier returns a Verifier of OAuth 2.0 access tokens in
// the RFC 9068 profile issued by a Writ server: tokens validated exactly
// as JWT-SVIDs are (allowed algorithms and headers, key by kid in the
// bundle of the sub's trust domain, signature first, exp, nbf, iat with
// Leeway, aud), except that the typ header must be at+jwt or
// application/at+jwt (ErrType), so that no JWT-SVID passes as an access
// token and no access token as a JWT-SVID. The claims particular to
// access tokens (iss, scope, client_id, jti, act, cnf) are in Claims.Raw,
// for the caller to check. It remembers up to size tokens, as
// NewVerifier does.
func NewAccessTokenVerifier(size int) *Verifier {
	v := NewVerifier(size)
	v.profile = profileAccessToken
	return v
}
