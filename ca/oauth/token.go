package oauth

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/jwtsvid"
	"writ.dev/writ/internal/logkey"
)

// Claims are the claims of an access token as the server writes them.
type Claims struct {
	Issuer   string        `json:"iss"`
	Subject  string        `json:"sub"`
	Audience string        `json:"aud"`
	Scope    string        `json:"scope,omitempty"`
	ClientID string        `json:"client_id"`
	JTI      string        `json:"jti"`
	IssuedAt int64         `json:"iat"`
	Expiry   int64         `json:"exp"`
	Cnf      *Confirmation `json:"cnf,omitempty"`
	Act      *Actor        `json:"act,omitempty"`
}

// Confirmation is the cnf claim of a certificate-bound token.
type Confirmation struct {
	X5tS256 string `json:"x5t#S256"`
}

// Actor is an act claim (RFC 8693 §4.1): the party acting, and in Act
// the one that acted before it.
type Actor struct {
	Subject string `json:"sub"`
	Act     *Actor `json:"act,omitempty"`
}

func (a *Actor) depth() int {
	n := 0
	for ; a != nil; a = a.Act {
		n++
	}
	return n
}

func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	st, f, ok := s.start(w, r)
	if !ok {
		return
	}
	grant := f.get("grant_type")
	if grant == "" {
		s.writeError(w, r, fail(errInvalidRequest, "no grant_type"))
		return
	}
	c, e := s.authenticate(r, f, st)
	if e != nil {
		s.writeError(w, r, e)
		return
	}
	var resp map[string]any
	switch grant {
	case GrantClientCredentials:
		resp, e = s.clientCredentials(f, st, c)
	case GrantTokenExchange:
		resp, e = s.tokenExchange(f, st, c)
	default:
		e = fail(errUnsupportedGrantType, "grant type %q", truncate(grant))
	}
	if e != nil {
		s.writeError(w, r, e)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// target returns the one audience a request names with audience or
// resource (RFC 8693, RFC 8707), which the client must be granted.
func target(f form, oc *datastore.OAuthClient) (string, *oauthError) {
	var targets []string
	for _, a := range f["audience"] {
		if !datastore.ValidAudience(a) {
			return "", fail(errInvalidTarget, "malformed audience")
		}
		targets = append(targets, a)
	}
	for _, res := range f["resource"] {
		u, err := url.Parse(res)
		if err != nil || !u.IsAbs() || u.Fragment != "" || !datastore.ValidAudience(res) {
			return "", fail(errInvalidTarget, "resource is not an absolute URI without fragment")
		}
		targets = append(targets, res)
	}
	slices.Sort(targets)
	targets = slices.Compact(targets)
	switch {
	case len(targets) == 0:
		return "", fail(errInvalidTarget, "no audience or resource")
	case len(targets) > 1:
		return "", fail(errInvalidTarget, "%d audiences requested; one per token", len(targets))
	case !slices.Contains(oc.Audiences, targets[0]):
		return "", fail(errInvalidTarget, "audience %q not granted to %s", truncate(targets[0]), oc.SPIFFEID)
	}
	return targets[0], nil
}

// scopes returns the scopes a request gets: those requested, which must
// all be in granted, or every scope in granted if none is requested.
func scopes(f form, oc *datastore.OAuthClient, granted []string) (string, *oauthError) {
	req := f.get("scope")
	if req == "" {
		return strings.Join(granted, " "), nil
	}
	var out []string
	for sc := range strings.SplitSeq(req, " ") {
		if !datastore.ValidScope(sc) {
			return "", fail(errInvalidScope, "malformed scope")
		}
		if !slices.Contains(granted, sc) {
			return "", fail(errInvalidScope, "scope %q not granted to %s, or not in the subject token", truncate(sc), oc.SPIFFEID)
		}
		out = append(out, sc)
	}
	slices.Sort(out)
	return strings.Join(slices.Compact(out), " "), nil
}

// registered returns the client's registration: a SPIFFE ID without one
// gets no token.
func registered(st *state, c *client) (*datastore.OAuthClient, *oauthError) {
	oc, ok := st.clients[c.id]
	if !ok {
		return nil, fail(errInvalidClient, "%s is not an OAuth client", c.id)
	}
	return oc, nil
}

func (s *Server) clientCredentials(f form, st *state, c *client) (map[string]any, *oauthError) {
	oc, e := registered(st, c)
	if e != nil {
		return nil, e
	}
	aud, e := target(f, oc)
	if e != nil {
		return nil, e
	}
	scope, e := scopes(f, oc, oc.Scopes)
	if e != nil {
		return nil, e
	}
	return s.issue(c, Claims{Subject: c.id.String(), Audience: aud, Scope: scope}, c.expires, false)
}

func (s *Server) tokenExchange(f form, st *state, c *client) (map[string]any, *oauthError) {
	oc, e := registered(st, c)
	if e != nil {
		return nil, e
	}
	switch {
	case f.get("actor_token") != "" || f.get("actor_token_type") != "":
		return nil, fail(errInvalidRequest, "actor tokens are not supported: the authenticated client is the actor")
	case f.get("requested_token_type") != "" && f.get("requested_token_type") != TokenTypeAccessToken:
		return nil, fail(errInvalidRequest, "requested token type %q", truncate(f.get("requested_token_type")))
	}
	subjectToken, subjectType := f.get("subject_token"), f.get("subject_token_type")
	if subjectToken == "" || subjectType == "" {
		return nil, fail(errInvalidRequest, "no subject_token or subject_token_type")
	}
	// The subject token must have been issued to the actor: its aud
	// holds the actor's SPIFFE ID.
	now := s.cfg.Clock.Now()
	var (
		sub     spiffeid.ID
		expires time.Time
		prior   *Actor
		// granted are the scopes the new token may get: for a JWT-SVID
		// subject (which carries no scope), the actor's own grants.
		granted = oc.Scopes
	)
	switch subjectType {
	case TokenTypeAccessToken:
		claims, tok, err := s.validate(subjectToken, st, []string{c.id.String()}, now)
		if err != nil {
			return nil, fail(errInvalidRequest, "subject token: %v", err)
		}
		sub, expires, prior = claims.ID, claims.Expiry, tok.Act
		// The new token may not widen the subject's: it gets only the
		// scopes both the subject token holds and the actor is granted.
		granted = slices.DeleteFunc(slices.Clone(oc.Scopes), func(sc string) bool {
			return !slices.Contains(strings.Fields(tok.Scope), sc)
		})
	case TokenTypeJWT:
		claims, err := jwtsvid.Validate(subjectToken, st.bundle, []string{c.id.String()}, now)
		if err != nil {
			return nil, fail(errInvalidRequest, "subject token: %v", err)
		}
		if st.clientRevoked(claims.IssuedAt, claims.ID.String()) {
			return nil, fail(errInvalidRequest, "subject token: %v", ErrRevoked)
		}
		sub, expires = claims.ID, claims.Expiry
	default:
		return nil, fail(errInvalidRequest, "subject token type %q", truncate(subjectType))
	}
	act := &Actor{Subject: c.id.String(), Act: prior}
	if act.depth() > maxActDepth {
		return nil, fail(errInvalidRequest, "delegation chain longer than %d", maxActDepth)
	}
	aud, e := target(f, oc)
	if e != nil {
		return nil, e
	}
	scope, e := scopes(f, oc, granted)
	if e != nil {
		return nil, e
	}
	if expires.Sub(now) < time.Second {
		return nil, fail(errInvalidRequest, "subject token expires within a second")
	}
	if c.expires.Before(expires) {
		expires = c.expires
	}
	return s.issue(c, Claims{Subject: sub.String(), Audience: aud, Scope: scope, Act: act}, expires, true)
}

// issue completes, signs and returns a token for c: iss, client_id, jti,
// iat, exp (at most TokenTTL, and not after notAfter nor the signing
// key's end) and cnf if c used mTLS.
func (s *Server) issue(c *client, claims Claims, notAfter time.Time, exchanged bool) (map[string]any, *oauthError) {
	active := s.cfg.Keys.Active()
	if active == nil || active.JWT.Signer == nil {
		return nil, fail(errUnavailable, "no active JWT key")
	}
	now := s.cfg.Clock.Now()
	exp := now.Add(s.cfg.TokenTTL)
	for _, t := range []time.Time{notAfter, active.JWTNotAfter} {
		if t.Before(exp) {
			exp = t
		}
	}
	exp = time.Unix(exp.Unix(), 0)
	if exp.Sub(now) < time.Second {
		return nil, fail(errInvalidClient, "credential expires within a second")
	}
	var jti [16]byte
	_, _ = rand.Read(jti[:])
	claims.Issuer = s.issuer
	claims.ClientID = c.id.String()
	claims.JTI = base64.RawURLEncoding.EncodeToString(jti[:])
	claims.IssuedAt = now.Unix()
	claims.Expiry = exp.Unix()
	if c.cert != nil {
		claims.Cnf = &Confirmation{X5tS256: thumbprint(c.cert)}
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return nil, fail(errServerError, "encode claims: %v", err)
	}
	token, err := jwtsvid.SignAccessToken(active.JWT, payload)
	if err != nil {
		return nil, fail(errServerError, "sign: %v", err)
	}
	s.log.Debug("issued access token", logkey.SPIFFEID, claims.Subject, "client_id", claims.ClientID, "audience", claims.Audience, "scope", claims.Scope, "jti", claims.JTI)
	resp := map[string]any{
		"access_token": token,
		"token_type":   "Bearer",
		"expires_in":   int64(exp.Sub(now) / time.Second),
	}
	if claims.Scope != "" {
		resp["scope"] = claims.Scope
	}
	if exchanged {
		resp["issued_token_type"] = TokenTypeAccessToken
	}
	return resp, nil
}

// Errors of validate, besides those of jwtsvid.ValidateAccessToken.
var (
	// ErrRevoked means the token was revoked.
	ErrRevoked = errors.New("oauth: token revoked")
	// ErrIssuer means the token was not issued by this authorization
	// server.
	ErrIssuer = errors.New("oauth: token from another issuer")
)

// validate validates an access token this server (or another sharing the
// datastore) issued: signature and times (jwtsvid.ValidateAccessToken,
// with audience unless nil), iss, and the revocation list.
func (s *Server) validate(token string, st *state, audience []string, now time.Time) (*jwtsvid.Claims, *Claims, error) {
	vc, err := jwtsvid.ValidateAccessToken(token, st.bundle, audience, now)
	if err != nil {
		return nil, nil, err
	}
	raw, err := json.Marshal(vc.Raw)
	if err != nil {
		return nil, nil, err
	}
	var c Claims
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, nil, err
	}
	if c.Issuer != s.issuer {
		return nil, nil, ErrIssuer
	}
	if _, ok := st.revokedJTIs[c.JTI]; ok && c.JTI != "" {
		return nil, nil, ErrRevoked
	}
	if st.clientRevoked(vc.IssuedAt, c.ClientID, c.Subject) {
		return nil, nil, ErrRevoked
	}
	for a := c.Act; a != nil; a = a.Act {
		if st.clientRevoked(vc.IssuedAt, a.Subject) {
			return nil, nil, ErrRevoked
		}
	}
	return vc, &c, nil
}

// clientRevoked reports whether a credential issued at iat that names
// any of ids (as client_id, sub or actor) is covered by a client
// revocation: one of ids was revoked at or after iat's second. A
// JWT-SVID without iat is covered by any revocation of its subject.
func (st *state) clientRevoked(iat time.Time, ids ...string) bool {
	for _, id := range ids {
		if at, ok := st.revokedClients[id]; ok && (iat.IsZero() || iat.Unix() <= at.Unix()) {
			return true
		}
	}
	return false
}
