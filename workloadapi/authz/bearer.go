package authz

import (
	"errors"
	"fmt"
	"strings"

	"writ.dev/writ/ca/jwtsvid"
)

// Errors of bearer-token authentication, besides ErrNotAllowed.
var (
	// ErrNoToken: the request carries no bearer token: no Authorization
	// header, an empty one, or another scheme (Basic...). HTTP answers 401
	// with a bare "WWW-Authenticate: Bearer" challenge, as RFC 6750 §3.1
	// asks for requests without authentication information.
	ErrNoToken = errors.New("authz: no bearer token")
	// ErrInvalidToken: a bearer token is present but is malformed, or is
	// not a valid JWT-SVID for this service (signature, key, expiry,
	// audience...); the wrapped error says which, and wraps the
	// ca/jwtsvid sentinel when validation failed. HTTP answers 401 with
	// error="invalid_token".
	ErrInvalidToken = errors.New("authz: invalid bearer token")
)

// bearerScheme is the auth-scheme of RFC 6750, matched without regard to
// case (RFC 9110 §11.1).
const bearerScheme = "bearer"

// MaxAuthorizationLen bounds the Authorization values parsed: the scheme,
// a space and the largest JWT-SVID ca/jwtsvid accepts.
const MaxAuthorizationLen = len(bearerScheme) + 1 + jwtsvid.MaxTokenSize

// ParseBearer returns the token of an Authorization value of the form
// "Bearer <token>" (RFC 6750 §2.1: the scheme in any case, one or more
// spaces, then a b64token: letters, digits, "-._~+/", then any "=").
// Nothing else is accepted: no other whitespace, nothing after the token.
// An empty value or another scheme is ErrNoToken; a Bearer value that is
// malformed or longer than MaxAuthorizationLen is ErrInvalidToken.
func ParseBearer(value string) (string, error) {
	if !hasFoldPrefix(value, bearerScheme) {
		return "", ErrNoToken // empty, or another scheme
	}
	rest := value[len(bearerScheme):]
	switch {
	case rest == "":
		return "", fmt.Errorf("%w: Bearer without a token", ErrInvalidToken)
	case rest[0] != ' ' && isTChar(rest[0]):
		return "", ErrNoToken // another scheme, such as "Bearerx"
	case rest[0] != ' ':
		return "", fmt.Errorf("%w: malformed Authorization value", ErrInvalidToken)
	case len(value) > MaxAuthorizationLen:
		return "", fmt.Errorf("%w: Authorization value of %d bytes exceeds %d", ErrInvalidToken, len(value), MaxAuthorizationLen)
	}
	token := strings.TrimLeft(rest, " ")
	if token == "" {
		return "", fmt.Errorf("%w: Bearer without a token", ErrInvalidToken)
	}
	if !isB64Token(token) {
		return "", fmt.Errorf("%w: malformed token (not an RFC 6750 b64token)", ErrInvalidToken)
	}
	return token, nil
}

// isTChar reports whether c may appear in an auth-scheme (RFC 9110 tchar).
func isTChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func hasFoldPrefix(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// isB64Token reports whether s is 1*( ALPHA / DIGIT / "-" / "." / "_" /
// "~" / "+" / "/" ) *"=".
func isB64Token(s string) bool {
	i := 0
	for ; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/') {
			break
		}
	}
	if i == 0 {
		return false
	}
	for ; i < len(s); i++ {
		if s[i] != '=' {
			return false
		}
	}
	return true
}
