package oauth

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/jwtsvid"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/logkey"
)

// Error codes of RFC 6749 §5.2, RFC 8707 and RFC 7009.
const (
	errInvalidRequest       = "invalid_request"
	errInvalidClient        = "invalid_client"
	errUnauthorizedClient   = "unauthorized_client"
	errUnsupportedGrantType = "unsupported_grant_type"
	errInvalidScope         = "invalid_scope"
	errInvalidTarget        = "invalid_target"
	errServerError          = "server_error"
	errUnavailable          = "temporarily_unavailable"
)

// oauthError is an error answer: code is what the client sees, reason
// goes only to the log.
type oauthError struct {
	code   string
	status int
	reason string
	// authScheme, for invalid_client when the client used the
	// Authorization header, is the scheme WWW-Authenticate must name.
	authScheme string
	// retryAfter, if positive, is sent as Retry-After (whole seconds,
	// rounded up).
	retryAfter time.Duration
}

func (e *oauthError) Error() string { return e.code + ": " + e.reason }

func fail(code, format string, args ...any) *oauthError {
	st := http.StatusBadRequest
	switch code {
	case errServerError:
		st = http.StatusInternalServerError
	case errUnavailable:
		st = http.StatusServiceUnavailable
	}
	return &oauthError{code: code, status: st, reason: fmt.Sprintf(format, args...)}
}

// storeFail maps a datastore failure.
func storeFail(op string, err error) *oauthError {
	if errors.Is(err, datastore.ErrUnavailable) {
		return fail(errUnavailable, "%s: %v", op, err)
	}
	return fail(errServerError, "%s: %v", op, err)
}

// writeError writes e as RFC 6749 §5.2 says: a JSON object with error,
// status 400, or 401 with WWW-Authenticate for invalid_client when the
// client tried the Authorization header.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, e *oauthError) {
	st := e.status
	if e.code == errInvalidClient && e.authScheme != "" {
		st = http.StatusUnauthorized
		w.Header().Set("WWW-Authenticate", e.authScheme+` realm="writ"`)
	}
	if e.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(int64((e.retryAfter+time.Second-1)/time.Second), 10))
	}
	lvl := slog.LevelDebug
	if st >= 500 {
		lvl = slog.LevelWarn
	}
	s.log.Log(r.Context(), lvl, "oauth request refused", "path", r.URL.Path, logkey.Code, e.code, logkey.Reason, e.reason)
	writeJSON(w, st, map[string]string{"error": e.code})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"server_error"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// form is a parsed request body: each parameter once, except those
// listed as repeatable.
type form map[string][]string

func (f form) get(name string) string {
	if v := f[name]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// repeatable parameters (RFC 8693 audience and resource).
var repeatable = map[string]bool{"audience": true, "resource": true}

// start begins a request to any endpoint: the current state and the
// request's form. ok false means the error has been written.
func (s *Server) start(w http.ResponseWriter, r *http.Request) (st *state, f form, ok bool) {
	if st = s.state.Load(); st == nil {
		s.writeError(w, r, fail(errUnavailable, "state not loaded yet"))
		return nil, nil, false
	}
	f, e := readForm(w, r)
	if e != nil {
		s.writeError(w, r, e)
		return nil, nil, false
	}
	return st, f, true
}

// readForm checks the method and content type and parses the body, at
// most MaxBodySize bytes. Parameters must not repeat (RFC 6749 §3.2) and
// nothing may come in the query string.
func readForm(w http.ResponseWriter, r *http.Request) (form, *oauthError) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		return nil, &oauthError{code: errInvalidRequest, status: http.StatusMethodNotAllowed, reason: "method " + r.Method}
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/x-www-form-urlencoded" {
		return nil, fail(errInvalidRequest, "content type %q", r.Header.Get("Content-Type"))
	}
	if r.URL.RawQuery != "" {
		return nil, fail(errInvalidRequest, "parameters in the query string")
	}
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodySize)
	if err := r.ParseForm(); err != nil {
		return nil, fail(errInvalidRequest, "body: %v", err)
	}
	f := form(r.PostForm)
	for name, vs := range f {
		if len(vs) > 1 && !repeatable[name] {
			return nil, fail(errInvalidRequest, "parameter %q repeated", name)
		}
	}
	return f, nil
}

// client is an authenticated client.
type client struct {
	id spiffeid.ID
	// expires is when the credential it authenticated with expires.
	expires time.Time
	// issued is when the credential was issued, as client revocations
	// count it: a JWT-SVID's iat (zero if it has none: covered by any
	// revocation of its subject), an X.509-SVID's NotBefore (which CAs
	// set early, Writ by x509ca.Backdate: a certificate issued shortly
	// after a revocation is covered too, never one before it spared).
	issued time.Time
	// cert is the leaf certificate of mTLS authentication, nil for a
	// client assertion.
	cert *x509.Certificate
}

// authenticate authenticates the client of a request, by its mTLS
// certificate or its client assertion, against st's bundle. Every
// failure is invalid_client.
func (s *Server) authenticate(r *http.Request, f form, st *state) (*client, *oauthError) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, _, _ := strings.Cut(h, " ")
		if scheme == "" || strings.ContainsAny(scheme, "\"\\\r\n\t") || len(scheme) > 32 {
			scheme = "Basic"
		}
		e := fail(errInvalidClient, "authorization header (%s) is not a client authentication method of this server", scheme)
		e.authScheme = scheme
		return nil, e
	}
	now := s.cfg.Clock.Now()
	var (
		c *client
		// used, for a client assertion, records its single use.
		used func() *oauthError
	)
	assertionType, assertion := f.get("client_assertion_type"), f.get("client_assertion")
	switch {
	case assertionType != "" || assertion != "":
		if assertionType != AssertionTypeJWTBearer || assertion == "" {
			return nil, fail(errInvalidClient, "client assertion type %q or empty assertion", assertionType)
		}
		claims, err := jwtsvid.Validate(assertion, st.bundle, []string{s.tokenEndpoint}, now)
		if err != nil {
			return nil, fail(errInvalidClient, "client assertion: %v", err)
		}
		// For this server alone: a JWT-SVID that also names another
		// audience was handed to that audience too, which could replay it
		// here once before its owner does.
		if len(claims.Audience) != 1 {
			return nil, fail(errInvalidClient, "client assertion of %s has %d audiences, want the token endpoint only", claims.ID, len(claims.Audience))
		}
		if claims.ID.TrustDomain() != s.cfg.TrustDomain {
			return nil, fail(errInvalidClient, "client assertion for %s, outside the trust domain", claims.ID)
		}
		// Single use: by jti if the assertion has one, else by its signing
		// input (header.payload; JWT-SVIDs carry no jti). Never by the
		// signature: an ECDSA signature (r, s) has a twin (r, n-s) that
		// verifies too, and other algorithms need not be unique either.
		sum := sha256.New()
		if jti, ok := claims.Raw["jti"].(string); ok && jti != "" {
			sum.Write([]byte("jti\x00" + claims.ID.String() + "\x00" + jti))
		} else {
			// Validate accepted three parts: the input ends at the last dot.
			sum.Write([]byte("input\x00" + assertion[:strings.LastIndexByte(assertion, '.')]))
		}
		hash := "assertion:" + hex.EncodeToString(sum.Sum(nil))
		used = func() *oauthError {
			// Kept until exp plus twice the leeway: this server accepts the
			// assertion up to exp+Leeway by its clock, and the server that
			// prunes the record may run up to Leeway ahead.
			if err := s.cfg.Store.UseClientAssertion(r.Context(), hash, claims.Expiry.Add(2*jwtsvid.Leeway)); err != nil {
				if errors.Is(err, datastore.ErrAlreadyExists) {
					return fail(errInvalidClient, "client assertion of %s used before", claims.ID)
				}
				return storeFail("use client assertion", err)
			}
			return nil
		}
		c = &client{id: claims.ID, expires: claims.Expiry, issued: claims.IssuedAt}
	case r.TLS != nil && len(r.TLS.PeerCertificates) > 0:
		chain := r.TLS.PeerCertificates
		id, err := x509ca.VerifyX509SVID(chain, st.bundle.X509Authorities(), now)
		if err != nil {
			return nil, fail(errInvalidClient, "client certificate: %v", err)
		}
		if id.TrustDomain() != s.cfg.TrustDomain {
			return nil, fail(errInvalidClient, "client certificate for %s, outside the trust domain", id)
		}
		if st.taintedChain(chain) {
			return nil, fail(errInvalidClient, "client certificate for %s chains to a tainted CA", id)
		}
		c = &client{id: id, expires: chain[0].NotAfter, issued: chain[0].NotBefore, cert: chain[0]}
	default:
		return nil, fail(errInvalidClient, "no client authentication")
	}
	// One revocation check for every method: a revoked client's earlier
	// credentials, of whatever kind, authenticate nothing.
	if st.clientRevoked(c.issued, c.id.String()) {
		return nil, fail(errInvalidClient, "client credential of %s: %v", c.id, ErrRevoked)
	}
	if used != nil {
		if e := used(); e != nil {
			return nil, e
		}
	}
	if cid := f.get("client_id"); cid != "" && cid != c.id.String() {
		return nil, fail(errInvalidClient, "client_id %q differs from the authenticated %s", truncate(cid), c.id)
	}
	return c, nil
}

// taintedChain reports whether a verified client chain goes through a
// tainted X.509 CA: one that signed a certificate of the chain (by its
// authority key ID, which covers the CA in the bundle above the last
// certificate sent), or one of the CAs sent.
func (st *state) taintedChain(chain []*x509.Certificate) bool {
	if len(st.taintedX509) == 0 {
		return false
	}
	for i, c := range chain {
		if len(c.AuthorityKeyId) > 0 && st.taintedX509[hex.EncodeToString(c.AuthorityKeyId)] {
			return true
		}
		if i > 0 && st.taintedX509[hex.EncodeToString(c.SubjectKeyId)] {
			return true
		}
	}
	return false
}

// thumbprint is the x5t#S256 of a certificate (RFC 8705 §3.1).
func thumbprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// truncate bounds caller input quoted in a log record.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
