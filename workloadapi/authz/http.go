package authz

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/jwtsvid"

	"writ.dev/writ/internal/logkey"
)

// Challenges of the WWW-Authenticate header (RFC 6750 §3).
const (
	challengeNoToken = `Bearer`
	challengeInvalid = `Bearer error="invalid_token", error_description="%s"`
)

// Middleware returns a handler that authenticates each request by its
// bearer JWT-SVID, authorizes the caller and calls next with the caller's
// SPIFFE ID in the request context (CallerID). It answers itself, without
// calling next:
//
//   - no bearer token: 401, WWW-Authenticate: Bearer;
//   - a malformed or invalid token, or more than one Authorization
//     header: 401, WWW-Authenticate: Bearer error="invalid_token" and a
//     short, fixed error_description ("token expired", "audience
//     mismatch", "invalid token");
//   - a valid token whose subject the policy does not allow: 403.
func (a *JWTAuthorizer) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := a.authenticateHTTP(r)
		if err != nil {
			a.refuseHTTP(w, r, id, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(WithCallerID(r.Context(), id)))
	})
}

func (a *JWTAuthorizer) authenticateHTTP(r *http.Request) (spiffeid.ID, error) {
	values := r.Header.Values("Authorization")
	switch len(values) {
	case 0:
		return spiffeid.ID{}, ErrNoToken
	case 1:
		return a.Authenticate(values[0])
	default:
		return spiffeid.ID{}, errMultipleHeaders
	}
}

var errMultipleHeaders = fmt.Errorf("%w: more than one Authorization header", ErrInvalidToken)

func (a *JWTAuthorizer) refuseHTTP(w http.ResponseWriter, r *http.Request, id spiffeid.ID, err error) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	switch {
	case errors.Is(err, ErrNotAllowed):
		a.log.Debug("request refused: caller not allowed", slog.String("path", r.URL.Path), slog.String(logkey.SPIFFEID, id.String()))
		http.Error(w, "caller not allowed", http.StatusForbidden)
	case errors.Is(err, ErrNoToken):
		a.log.Debug("request refused: no bearer token", slog.String("path", r.URL.Path))
		h.Set("WWW-Authenticate", challengeNoToken)
		http.Error(w, "a JWT-SVID bearer token is required", http.StatusUnauthorized)
	default:
		a.log.Debug("request refused: invalid bearer token", slog.String("path", r.URL.Path), slog.String(logkey.Reason, err.Error()))
		h.Set("WWW-Authenticate", fmt.Sprintf(challengeInvalid, describe(err)))
		http.Error(w, describe(err), http.StatusUnauthorized)
	}
}

// describe returns a short, fixed description of why a token was refused,
// safe to show the caller.
func describe(err error) string {
	switch {
	case errors.Is(err, jwtsvid.ErrExpired):
		return "token expired"
	case errors.Is(err, jwtsvid.ErrNotYetValid):
		return "token not yet valid"
	case errors.Is(err, jwtsvid.ErrAudience):
		return "audience mismatch"
	case errors.Is(err, ErrNotAllowed):
		return "caller not allowed"
	case errors.Is(err, ErrNoToken):
		return "no bearer token"
	default:
		return "invalid token"
	}
}
