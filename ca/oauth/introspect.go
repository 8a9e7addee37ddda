package oauth

import (
	"errors"
	"net/http"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/jwtsvid"
)

// serveIntrospect answers RFC 7662 introspection to an authenticated
// caller (any SVID of the trust domain). A token that is malformed,
// forged, expired, revoked or from another issuer is {"active": false}.
func (s *Server) serveIntrospect(w http.ResponseWriter, r *http.Request) {
	st, f, ok := s.start(w, r)
	if !ok {
		return
	}
	if _, e := s.authenticate(r, f, st); e != nil {
		s.writeError(w, r, e)
		return
	}
	token := f.get("token")
	if token == "" {
		s.writeError(w, r, fail(errInvalidRequest, "no token"))
		return
	}
	vc, c, err := s.validate(token, st, nil, s.cfg.Clock.Now())
	if err != nil {
		s.log.Debug("introspected an inactive token", "reason", err.Error())
		writeJSON(w, http.StatusOK, map[string]any{"active": false})
		return
	}
	resp := map[string]any{
		"active":     true,
		"token_type": "Bearer",
		"iss":        c.Issuer,
		"sub":        c.Subject,
		"aud":        c.Audience,
		"client_id":  c.ClientID,
		"jti":        c.JTI,
		"iat":        vc.IssuedAt.Unix(),
		"exp":        vc.Expiry.Unix(),
	}
	if c.Scope != "" {
		resp["scope"] = c.Scope
	}
	if c.Cnf != nil {
		resp["cnf"] = c.Cnf
	}
	if c.Act != nil {
		resp["act"] = c.Act
	}
	writeJSON(w, http.StatusOK, resp)
}

// serveRevoke revokes a token (RFC 7009) at the request of the client it
// was issued to. A token that is invalid, expired or already revoked
// gets 200 as well; a valid token of another client is
// unauthorized_client. A client that exceeds its revocation quota
// (RevokeRate, MaxRevocationsPerClient) gets 503 temporarily_unavailable
// with Retry-After, as RFC 7009 §2.2.1 allows.
func (s *Server) serveRevoke(w http.ResponseWriter, r *http.Request) {
	st, f, ok := s.start(w, r)
	if !ok {
		return
	}
	c, e := s.authenticate(r, f, st)
	if e != nil {
		s.writeError(w, r, e)
		return
	}
	token := f.get("token")
	if token == "" {
		s.writeError(w, r, fail(errInvalidRequest, "no token"))
		return
	}
	now := s.cfg.Clock.Now()
	vc, claims, err := s.validate(token, st, nil, now)
	if err != nil {
		if !errors.Is(err, ErrRevoked) {
			s.log.Debug("revocation of an invalid token ignored", "reason", err.Error())
		}
		writeJSON(w, http.StatusOK, struct{}{})
		return
	}
	if claims.ClientID != c.id.String() {
		s.writeError(w, r, fail(errUnauthorizedClient, "%s may not revoke a token issued to %s", c.id, truncate(claims.ClientID)))
		return
	}
	// Kept until exp plus twice the leeway: a validator accepts the token
	// up to exp+Leeway by its own clock, which may lag the clock that
	// prunes the record by up to Leeway.
	rev := &datastore.Revocation{JTI: claims.JTI, RevokedAt: now, ExpiresAt: vc.Expiry.Add(2 * jwtsvid.Leeway)}
	if wait, ok := s.revokes.take(claims.ClientID, now, rev.ExpiresAt); !ok {
		e := fail(errUnavailable, "%s exceeds its revocation quota", c.id)
		e.retryAfter = wait
		s.writeError(w, r, e)
		return
	}
	if err := s.cfg.Store.PutRevocation(r.Context(), rev); err != nil {
		s.writeError(w, r, storeFail("put revocation", err))
		return
	}
	for {
		cur := s.state.Load()
		if s.state.CompareAndSwap(cur, cur.withRevocation(rev)) {
			break
		}
	}
	s.log.Info("access token revoked", "client_id", claims.ClientID, "jti", claims.JTI)
	writeJSON(w, http.StatusOK, struct{}{})
}
