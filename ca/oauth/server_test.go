package oauth_test

import (
	"context"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/datastore/boltstore"
	"writ.dev/writ/ca/datastore/pgstore"
	"writ.dev/writ/ca/jwtsvid"
	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/ca/oauth"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/pgtest"
	"writ.dev/writ/internal/testca"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

var (
	td = spiffeid.RequireTrustDomainFromString("example.org")
	t0 = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
)

const (
	issuer   = "https://oauth.example.org"
	tokenURL = issuer + "/token"
	webID    = "spiffe://example.org/web"
	apiID    = "spiffe://example.org/api"
	dbID     = "spiffe://example.org/db"
	strayID  = "spiffe://example.org/stray"
)

// keys is the key manager's view the server signs with: a real key.
type keys struct{ active *keymanager.Active }

func (k keys) Active() *keymanager.Active { return k.active }

// testStore is what the tests use of a store.
type testStore interface {
	oauth.Store
	UpdateBundle(ctx context.Context, td spiffeid.TrustDomain, fn func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error)) (*spiffebundle.Bundle, error)
	PutOAuthClient(ctx context.Context, c *datastore.OAuthClient) error
}

type env struct {
	t     testing.TB
	clk   *fakeclock.Clock
	store testStore
	ca    *testca.CA
	jwt   jwtsvid.Key
	srv   *oauth.Server
	h     http.Handler
}

// newEnv runs a server on a boltstore holding the trust domain's bundle
// and three clients: web (audiences api and orders, scopes read and
// write), api (audience db, scope db:read) and db (audience api).
func newEnv(t testing.TB) *env {
	store, err := boltstore.Open(filepath.Join(t.TempDir(), "datastore.db"), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return newEnvOn(t, store, nil)
}

// newEnvOn runs a server on store. With a nil peer it stores the bundle
// and the clients first; with a peer (a server on another handle of the
// same database) it uses the peer's CA and keys.
func newEnvOn(t testing.TB, store testStore, peer *env) *env {
	clk := fakeclock.New(t0)
	var err error
	if peer != nil {
		e := &env{t: t, clk: clk, store: store, ca: peer.ca, jwt: peer.jwt}
		e.start(t)
		return e
	}
	ca := testca.New(t, td, t0.Add(-time.Hour), 48*time.Hour)
	signer, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, clk: clk, store: store, ca: ca, jwt: jwtsvid.Key{ID: "jwt-1", Signer: signer}}
	ctx := t.Context()
	b := spiffebundle.FromX509Authorities(td, []*x509.Certificate{ca.Root})
	if err := b.AddJWTAuthority(e.jwt.ID, signer.Public()); err != nil {
		t.Fatal(err)
	}
	if _, err := store.UpdateBundle(ctx, td, func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error) { return b, nil }); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*datastore.OAuthClient{
		{SPIFFEID: spiffeid.RequireFromString(webID), Audiences: []string{"orders", apiID}, Scopes: []string{"read", "write"}},
		{SPIFFEID: spiffeid.RequireFromString(apiID), Audiences: []string{dbID}, Scopes: []string{"db:read"}},
		{SPIFFEID: spiffeid.RequireFromString(dbID), Audiences: []string{"https://ledger.example.org/"}},
	} {
		if err := store.PutOAuthClient(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	e.start(t)
	return e
}

// start runs the server and waits until it has loaded its state.
func (e *env) start(t testing.TB) {
	clk, store, ctx := e.clk, e.store, t.Context()
	var err error
	e.srv, err = oauth.New(oauth.Config{TrustDomain: td, Issuer: issuer, Store: store, TokenTTL: 5 * time.Minute,
		Keys: keys{&keymanager.Active{JWT: e.jwt, JWTNotAfter: t0.Add(24 * time.Hour)}}, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- e.srv.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	// Run arms its timer once the state is loaded.
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := clk.WaitForTimers(wctx, 1); err != nil {
		t.Fatal(err)
	}
	e.h = e.srv.Handler(nil)
}

// cert mints an X.509-SVID for id, valid from now for ttl.
func (e *env) cert(id string, ttl time.Duration) []*x509.Certificate {
	s := e.ca.SVID(e.t, spiffeid.RequireFromString(id), e.clk.Now(), ttl)
	return []*x509.Certificate{s.Leaf}
}

// assertion signs a JWT-SVID for id with aud.
func (e *env) assertion(id, aud string, ttl time.Duration) string {
	tok, _, err := jwtsvid.Sign(e.clk.Now(), e.jwt, spiffeid.RequireFromString(id), []string{aud}, ttl, t0.Add(24*time.Hour))
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

type request struct {
	path    string
	method  string
	form    url.Values
	body    string // raw body instead of form
	ctype   string
	certs   []*x509.Certificate
	headers map[string]string
}

type response struct {
	status int
	header http.Header
	body   map[string]any
}

func (e *env) do(r request) response {
	e.t.Helper()
	body := r.body
	if r.form != nil {
		body = r.form.Encode()
	}
	req := httptest.NewRequest(cmpOr(r.method, http.MethodPost), "https://oauth.example.org"+cmpOr(r.path, oauth.TokenPath), strings.NewReader(body))
	req.Header.Set("Content-Type", cmpOr(r.ctype, "application/x-www-form-urlencoded"))
	for k, v := range r.headers {
		req.Header.Set(k, v)
	}
	if r.certs != nil {
		req.TLS = &tls.ConnectionState{PeerCertificates: r.certs}
	} else {
		req.TLS = &tls.ConnectionState{}
	}
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, req)
	resp := response{status: w.Code, header: w.Header()}
	if w.Body.Len() > 0 {
		if err := json.Unmarshal(w.Body.Bytes(), &resp.body); err != nil {
			e.t.Fatalf("body %q: %v", w.Body.String(), err)
		}
	}
	return resp
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// token gets a token with mTLS as id, or fails.
func (e *env) token(id string, form url.Values) string {
	e.t.Helper()
	form.Set("grant_type", "client_credentials")
	r := e.do(request{form: form, certs: e.cert(id, time.Hour)})
	if r.status != http.StatusOK {
		e.t.Fatalf("token for %s: %d %v", id, r.status, r.body)
	}
	return r.body["access_token"].(string)
}

func (e *env) claims(token, aud string) map[string]any {
	e.t.Helper()
	b := spiffebundle.New(td)
	if err := b.AddJWTAuthority(e.jwt.ID, e.jwt.Signer.Public()); err != nil {
		e.t.Fatal(err)
	}
	c, err := jwtsvid.ValidateAccessToken(token, b, []string{aud}, e.clk.Now())
	if err != nil {
		e.t.Fatalf("token does not validate for %s: %v", aud, err)
	}
	return c.Raw
}

// TestTokenErrors: every bad request gets the RFC's error code and
// status, a body with nothing but the code, and Cache-Control: no-store.
func TestTokenErrors(t *testing.T) {
	e := newEnv(t)
	good := func() url.Values {
		return url.Values{"grant_type": {"client_credentials"}, "audience": {"orders"}}
	}
	with := func(kv ...string) url.Values {
		f := good()
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "" {
				f.Del(kv[i])
			} else {
				f.Set(kv[i], kv[i+1])
			}
		}
		return f
	}
	replayed := e.assertion(webID, tokenURL, time.Minute)
	if r := e.do(request{form: with("client_assertion_type", oauth.AssertionTypeJWTBearer, "client_assertion", replayed)}); r.status != http.StatusOK {
		t.Fatalf("first use of an assertion: %d %v", r.status, r.body)
	}
	otherCA := testca.New(t, td, t0.Add(-time.Hour), 48*time.Hour)
	accessToken := e.token(webID, url.Values{"audience": {"orders"}})

	tests := []struct {
		name   string
		req    func() request
		status int
		code   string
		auth   string // WWW-Authenticate
	}{
		{"wrong grant type", func() request {
			return request{form: with("grant_type", "authorization_code", "code", "x"), certs: e.cert(webID, time.Hour)}
		}, 400, "unsupported_grant_type", ""},
		{"password grant", func() request {
			return request{form: with("grant_type", "password", "username", "u", "password", "p"), certs: e.cert(webID, time.Hour)}
		}, 400, "unsupported_grant_type", ""},
		{"no grant type", func() request {
			return request{form: with("grant_type", ""), certs: e.cert(webID, time.Hour)}
		}, 400, "invalid_request", ""},
		{"replayed assertion", func() request {
			return request{form: with("client_assertion_type", oauth.AssertionTypeJWTBearer, "client_assertion", replayed)}
		}, 400, "invalid_client", ""},
		{"assertion for another audience", func() request {
			return request{form: with("client_assertion_type", oauth.AssertionTypeJWTBearer, "client_assertion", e.assertion(webID, "https://other.example.org/token", time.Minute))}
		}, 400, "invalid_client", ""},
		{"assertion for the issuer, not the token endpoint", func() request {
			return request{form: with("client_assertion_type", oauth.AssertionTypeJWTBearer, "client_assertion", e.assertion(webID, issuer, time.Minute))}
		}, 400, "invalid_client", ""},
		{"expired assertion", func() request {
			a := e.assertion(webID, tokenURL, time.Minute)
			e.clk.Advance(2 * time.Minute)
			return request{form: with("client_assertion_type", oauth.AssertionTypeJWTBearer, "client_assertion", a)}
		}, 400, "invalid_client", ""},
		{"access token as an assertion", func() request {
			return request{form: with("client_assertion_type", oauth.AssertionTypeJWTBearer, "client_assertion", accessToken)}
		}, 400, "invalid_client", ""},
		{"wrong assertion type", func() request {
			return request{form: with("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:saml2-bearer", "client_assertion", e.assertion(webID, tokenURL, time.Minute))}
		}, 400, "invalid_client", ""},
		{"expired SVID", func() request {
			certs := e.cert(webID, time.Hour)
			e.clk.Advance(2 * time.Hour)
			return request{form: good(), certs: certs}
		}, 400, "invalid_client", ""},
		{"SVID of another CA", func() request {
			s := otherCA.SVID(t, spiffeid.RequireFromString(webID), e.clk.Now(), time.Hour)
			return request{form: good(), certs: []*x509.Certificate{s.Leaf}}
		}, 400, "invalid_client", ""},
		{"unknown client", func() request { return request{form: good(), certs: e.cert(strayID, time.Hour)} }, 400, "invalid_client", ""},
		{"no client authentication", func() request { return request{form: good()} }, 400, "invalid_client", ""},
		{"client secret in Basic", func() request {
			return request{form: good(), headers: map[string]string{"Authorization": "Basic d2ViOnNlY3JldA=="}}
		}, 401, "invalid_client", `Basic realm="writ"`},
		{"client_id of another client", func() request {
			return request{form: with("client_id", apiID), certs: e.cert(webID, time.Hour)}
		}, 400, "invalid_client", ""},
		{"scope not granted", func() request { return request{form: with("scope", "read admin"), certs: e.cert(webID, time.Hour)} }, 400, "invalid_scope", ""},
		{"malformed scope", func() request { return request{form: with("scope", "read  write"), certs: e.cert(webID, time.Hour)} }, 400, "invalid_scope", ""},
		{"audience not granted", func() request { return request{form: with("audience", dbID), certs: e.cert(webID, time.Hour)} }, 400, "invalid_target", ""},
		{"no audience", func() request { return request{form: with("audience", ""), certs: e.cert(webID, time.Hour)} }, 400, "invalid_target", ""},
		{"two audiences", func() request {
			f := good()
			f.Add("audience", apiID)
			return request{form: f, certs: e.cert(webID, time.Hour)}
		}, 400, "invalid_target", ""},
		{"resource with a fragment", func() request {
			return request{form: with("audience", "", "resource", "https://api.example.org/#x"), certs: e.cert(webID, time.Hour)}
		}, 400, "invalid_target", ""},
		{"oversized body", func() request {
			return request{body: good().Encode() + "&pad=" + strings.Repeat("a", oauth.MaxBodySize), certs: e.cert(webID, time.Hour)}
		}, 400, "invalid_request", ""},
		{"repeated parameter", func() request {
			return request{body: good().Encode() + "&scope=read&scope=write", certs: e.cert(webID, time.Hour)}
		}, 400, "invalid_request", ""},
		{"JSON body", func() request {
			return request{body: `{"grant_type":"client_credentials"}`, ctype: "application/json", certs: e.cert(webID, time.Hour)}
		}, 400, "invalid_request", ""},
		{"parameters in the query", func() request {
			return request{path: oauth.TokenPath + "?grant_type=client_credentials", form: good(), certs: e.cert(webID, time.Hour)}
		}, 400, "invalid_request", ""},
		{"GET", func() request { return request{method: http.MethodGet, certs: e.cert(webID, time.Hour)} }, 405, "invalid_request", ""},
		{"exchange without subject token", func() request {
			return request{form: with("grant_type", oauth.GrantTokenExchange), certs: e.cert(apiID, time.Hour)}
		}, 400, "invalid_request", ""},
		{"exchange of a token issued to another party", func() request {
			return request{form: with("grant_type", oauth.GrantTokenExchange, "audience", dbID, "subject_token_type", oauth.TokenTypeAccessToken, "subject_token", accessToken), certs: e.cert(apiID, time.Hour)}
		}, 400, "invalid_request", ""},
		{"exchange of an access token declared a JWT", func() request {
			tok := e.token(webID, url.Values{"audience": {apiID}})
			return request{form: with("grant_type", oauth.GrantTokenExchange, "audience", dbID, "subject_token_type", oauth.TokenTypeJWT, "subject_token", tok), certs: e.cert(apiID, time.Hour)}
		}, 400, "invalid_request", ""},
		{"exchange with an actor token", func() request {
			tok := e.token(webID, url.Values{"audience": {apiID}})
			return request{form: with("grant_type", oauth.GrantTokenExchange, "audience", dbID, "subject_token_type", oauth.TokenTypeAccessToken, "subject_token", tok, "actor_token", tok, "actor_token_type", oauth.TokenTypeAccessToken), certs: e.cert(apiID, time.Hour)}
		}, 400, "invalid_request", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.clk.Set(t0)
			r := e.do(tt.req())
			if r.status != tt.status || r.body["error"] != tt.code || len(r.body) != 1 {
				t.Fatalf("got %d %v, want %d {error: %s}", r.status, r.body, tt.status, tt.code)
			}
			if r.header.Get("Cache-Control") != "no-store" || r.header.Get("Content-Type") != "application/json" {
				t.Errorf("headers %v", r.header)
			}
			if got := r.header.Get("WWW-Authenticate"); got != tt.auth {
				t.Errorf("WWW-Authenticate %q, want %q", got, tt.auth)
			}
		})
	}
}

// TestClientCredentials: the claims of RFC 9068, the granted scopes when
// none is requested, cnf for mTLS only, and a lifetime capped by the
// client's SVID.
func TestClientCredentials(t *testing.T) {
	e := newEnv(t)
	certs := e.cert(webID, time.Hour)
	r := e.do(request{form: url.Values{"grant_type": {"client_credentials"}, "resource": {apiID}}, certs: certs})
	if r.status != 200 || r.body["token_type"] != "Bearer" || r.body["expires_in"] != 300.0 || r.body["scope"] != "read write" {
		t.Fatalf("token response %d %v", r.status, r.body)
	}
	c := e.claims(r.body["access_token"].(string), apiID)
	cnf, _ := c["cnf"].(map[string]any)
	if c["iss"] != issuer || c["sub"] != webID || c["client_id"] != webID || c["aud"] != apiID || c["scope"] != "read write" ||
		c["iat"] != float64(t0.Unix()) || c["exp"] != float64(t0.Add(5*time.Minute).Unix()) || c["jti"] == "" || cnf["x5t#S256"] == nil {
		t.Fatalf("claims %v", c)
	}
	// A JWT-SVID is not an access token, nor the reverse.
	b := spiffebundle.New(td)
	_ = b.AddJWTAuthority(e.jwt.ID, e.jwt.Signer.Public())
	if _, err := jwtsvid.Validate(r.body["access_token"].(string), b, []string{apiID}, t0); err == nil {
		t.Fatal("an access token validated as a JWT-SVID")
	}
	if _, err := jwtsvid.ValidateAccessToken(e.assertion(webID, apiID, time.Minute), b, []string{apiID}, t0); err == nil {
		t.Fatal("a JWT-SVID validated as an access token")
	}

	// An SVID expiring in 90 s caps the token; so does an assertion.
	r = e.do(request{form: url.Values{"grant_type": {"client_credentials"}, "audience": {"orders"}, "scope": {"write"}}, certs: e.cert(webID, 90*time.Second)})
	if r.status != 200 || r.body["expires_in"] != 90.0 || r.body["scope"] != "write" {
		t.Fatalf("token on a short SVID: %d %v", r.status, r.body)
	}
	r = e.do(request{form: url.Values{"grant_type": {"client_credentials"}, "audience": {"orders"},
		"client_assertion_type": {oauth.AssertionTypeJWTBearer}, "client_assertion": {e.assertion(webID, tokenURL, 2*time.Minute)}, "client_id": {webID}}})
	if r.status != 200 || r.body["expires_in"] != 120.0 {
		t.Fatalf("token on an assertion: %d %v", r.status, r.body)
	}
	if c := e.claims(r.body["access_token"].(string), "orders"); c["cnf"] != nil {
		t.Fatalf("a token issued on an assertion is certificate-bound: %v", c)
	}
}

// TestTokenExchangeChain: web calls api, api calls db, db calls the
// ledger; each exchange nests the previous act.
func TestTokenExchangeChain(t *testing.T) {
	e := newEnv(t)
	tok := e.token(webID, url.Values{"audience": {apiID}})
	exchange := func(actor, subject, subjectType, aud string) map[string]any {
		t.Helper()
		r := e.do(request{form: url.Values{"grant_type": {oauth.GrantTokenExchange}, "subject_token": {subject},
			"subject_token_type": {subjectType}, "audience": {aud}}, certs: e.cert(actor, time.Hour)})
		if r.status != 200 || r.body["issued_token_type"] != oauth.TokenTypeAccessToken {
			t.Fatalf("exchange by %s: %d %v", actor, r.status, r.body)
		}
		return r.body
	}
	r := exchange(apiID, tok, oauth.TokenTypeAccessToken, dbID)
	c := e.claims(r["access_token"].(string), dbID)
	// web's token holds read and write, api is granted db:read: none of
	// them is in both.
	if c["sub"] != webID || c["client_id"] != apiID || c["scope"] != nil || !actIs(c["act"], apiID) {
		t.Fatalf("first hop claims %v", c)
	}
	hop := e.do(request{form: url.Values{"grant_type": {oauth.GrantTokenExchange}, "subject_token": {r["access_token"].(string)},
		"subject_token_type": {oauth.TokenTypeAccessToken}, "resource": {"https://ledger.example.org/"}}, certs: e.cert(dbID, time.Hour)})
	if hop.status != 200 {
		t.Fatalf("second hop: %d %v", hop.status, hop.body)
	}
	c = e.claims(hop.body["access_token"].(string), "https://ledger.example.org/")
	if c["sub"] != webID || c["client_id"] != dbID || c["scope"] != nil || !actIs(c["act"], dbID, apiID) {
		t.Fatalf("second hop claims %v", c)
	}
	// A JWT-SVID for api is a subject token too.
	r2 := exchange(apiID, e.assertion(webID, apiID, time.Minute), oauth.TokenTypeJWT, dbID)
	if c := e.claims(r2["access_token"].(string), dbID); c["sub"] != webID || !actIs(c["act"], apiID) || r2["expires_in"] != 60.0 {
		t.Fatalf("exchanged JWT-SVID: %v %v", c, r2)
	}
}

// actIs reports whether act names ids, outermost (the current actor)
// first.
func actIs(act any, ids ...string) bool {
	for _, id := range ids {
		m, ok := act.(map[string]any)
		if !ok || m["sub"] != id {
			return false
		}
		act = m["act"]
	}
	return act == nil
}

// TestIntrospectAndRevoke: a live token introspects active with its
// claims; after its client revokes it, or an operator revokes the
// client, it is inactive, as are forged, expired and foreign tokens.
func TestIntrospectAndRevoke(t *testing.T) {
	e := newEnv(t)
	tok := e.token(webID, url.Values{"audience": {"orders"}, "scope": {"read"}})
	introspect := func(token string) map[string]any {
		t.Helper()
		r := e.do(request{path: oauth.IntrospectPath, form: url.Values{"token": {token}}, certs: e.cert(dbID, time.Hour)})
		if r.status != 200 {
			t.Fatalf("introspect: %d %v", r.status, r.body)
		}
		return r.body
	}
	if got := introspect(tok); got["active"] != true || got["sub"] != webID || got["client_id"] != webID || got["scope"] != "read" || got["aud"] != "orders" || got["cnf"] == nil {
		t.Fatalf("introspection %v", got)
	}
	for name, bad := range map[string]string{
		"garbage":   "not-a-token",
		"JWT-SVID":  e.assertion(webID, "orders", time.Minute),
		"tampered":  tok[:len(tok)-4] + "AAAA",
		"truncated": tok[:strings.LastIndexByte(tok, '.')],
	} {
		if got := introspect(bad); len(got) != 1 || got["active"] != false {
			t.Errorf("introspection of a %s token: %v", name, got)
		}
	}
	if r := e.do(request{path: oauth.IntrospectPath, form: url.Values{"token": {tok}}}); r.status != 400 || r.body["error"] != "invalid_client" {
		t.Fatalf("unauthenticated introspection: %d %v", r.status, r.body)
	}

	// Only the client a token was issued to may revoke it.
	revoke := func(id, token string) response {
		return e.do(request{path: oauth.RevokePath, form: url.Values{"token": {token}}, certs: e.cert(id, time.Hour)})
	}
	if r := revoke(apiID, tok); r.status != 400 || r.body["error"] != "unauthorized_client" {
		t.Fatalf("revocation by another client: %d %v", r.status, r.body)
	}
	if r := revoke(webID, tok); r.status != 200 {
		t.Fatalf("revocation: %d %v", r.status, r.body)
	}
	if got := introspect(tok); got["active"] != false {
		t.Fatalf("introspection after revocation: %v", got)
	}
	if r := revoke(webID, tok); r.status != 200 {
		t.Fatalf("second revocation: %d %v", r.status, r.body)
	}
	if r := revoke(webID, "not-a-token"); r.status != 200 {
		t.Fatalf("revocation of an invalid token: %d %v", r.status, r.body)
	}
	revs, err := e.store.ListRevocations(t.Context(), t0)
	if err != nil || len(revs) != 1 || revs[0].JTI == "" || !revs[0].ExpiresAt.Equal(t0.Add(5*time.Minute+2*jwtsvid.Leeway)) {
		t.Fatalf("stored revocations %+v %v", revs, err)
	}
	// A revoked token cannot be exchanged either.
	apiTok := e.token(webID, url.Values{"audience": {apiID}})
	if err := e.store.PutRevocation(t.Context(), &datastore.Revocation{ClientID: webID, RevokedAt: t0, ExpiresAt: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for introspect(apiTok)["active"] != false {
		if time.Now().After(deadline) {
			t.Fatal("a token of a revoked client still introspects active")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if r := e.do(request{form: url.Values{"grant_type": {oauth.GrantTokenExchange}, "subject_token": {apiTok},
		"subject_token_type": {oauth.TokenTypeAccessToken}, "audience": {dbID}}, certs: e.cert(apiID, time.Hour)}); r.status != 400 || r.body["error"] != "invalid_request" {
		t.Fatalf("exchange of a revoked token: %d %v", r.status, r.body)
	}
	// Tokens issued after the revocation's second are valid; expired ones
	// are not. (The client's X.509-SVID counts as issued at its
	// NotBefore, x509ca.Backdate early.)
	later0 := t0.Add(x509ca.Backdate + time.Second)
	e.clk.Set(later0)
	later := e.token(webID, url.Values{"audience": {"orders"}})
	if got := introspect(later); got["active"] != true {
		t.Fatalf("a token issued after the client's revocation: %v", got)
	}
	e.clk.Set(later0.Add(5*time.Minute + jwtsvid.Leeway))
	if got := introspect(later); got["active"] != false {
		t.Fatalf("an expired token: %v", got)
	}
}

func TestMetadata(t *testing.T) {
	e := newEnv(t)
	req := httptest.NewRequest(http.MethodGet, "https://oauth.example.org"+oauth.MetadataPath, nil)
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, req)
	var m map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil || w.Code != 200 {
		t.Fatalf("%d %q %v", w.Code, w.Body, err)
	}
	if m["issuer"] != issuer || m["token_endpoint"] != tokenURL || m["introspection_endpoint"] != issuer+"/introspect" ||
		m["revocation_endpoint"] != issuer+"/revoke" || m["tls_client_certificate_bound_access_tokens"] != true {
		t.Fatalf("metadata %v", m)
	}
}

func TestNewRefusesBadIssuers(t *testing.T) {
	for _, iss := range []string{"", "http://oauth.example.org", "https://oauth.example.org/path", "https://u@oauth.example.org", "https://oauth.example.org?q"} {
		if _, err := oauth.New(oauth.Config{TrustDomain: td, Issuer: iss, Store: &boltstore.Store{}, Keys: keys{}}); err == nil {
			t.Errorf("issuer %q accepted", iss)
		}
	}
	// Revocations are kept for MaxTokenTTL: a longer token would outlive
	// them.
	for _, ttl := range []time.Duration{-time.Second, oauth.MaxTokenTTL + time.Second} {
		if _, err := oauth.New(oauth.Config{TrustDomain: td, Issuer: issuer, Store: &boltstore.Store{}, Keys: keys{}, TokenTTL: ttl}); !errors.Is(err, oauth.ErrConfig) {
			t.Errorf("token TTL %s: %v", ttl, err)
		}
	}
	if _, err := oauth.New(oauth.Config{TrustDomain: td, Issuer: issuer, Store: &boltstore.Store{}, Keys: keys{}, TokenTTL: oauth.MaxTokenTTL}); err != nil {
		t.Errorf("token TTL %s: %v", oauth.MaxTokenTTL, err)
	}
}

// FuzzEndpoints: whatever the body, every endpoint answers JSON, with
// only an error code when it refuses, and never a token to a caller
// without credentials.
func FuzzEndpoints(f *testing.F) {
	e := newEnv(f)
	for _, seed := range []string{
		"grant_type=client_credentials&audience=orders",
		"grant_type=client_credentials&audience=orders&scope=read+write",
		"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=a.b.c&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt",
		"client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=eyJhbGciOiJFUzI1NiJ9.e30.AA",
		"token=x&token_type_hint=access_token",
		"a=%zz", "audience=orders&audience=orders", "",
	} {
		for _, path := range []string{oauth.TokenPath, oauth.IntrospectPath, oauth.RevokePath} {
			f.Add(path, seed)
		}
	}
	f.Fuzz(func(t *testing.T, path, body string) {
		if path != oauth.TokenPath && path != oauth.IntrospectPath && path != oauth.RevokePath {
			return
		}
		req := httptest.NewRequest(http.MethodPost, "https://oauth.example.org"+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		w := httptest.NewRecorder()
		e.h.ServeHTTP(w, req)
		var out map[string]any
		if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil {
			t.Fatalf("status %d, body %q is not JSON: %v", w.Code, w.Body, err)
		}
		if w.Code != http.StatusOK {
			if len(out) != 1 || out["error"] == nil {
				t.Fatalf("status %d with body %v", w.Code, out)
			}
			return
		}
		if out["access_token"] != nil || out["active"] == true {
			t.Fatalf("an unauthenticated caller got %v", out)
		}
	})
}

// TestServersShareOneDatabase: two servers on one PostgreSQL database
// accept an assertion once between them, and each sees the clients and
// revocations written through the other.
func TestServersShareOneDatabase(t *testing.T) {
	dsn := pgtest.Shared(t).NewDatabase(t)
	open := func() *pgstore.Store {
		s, err := pgstore.Open(t.Context(), pgstore.Config{ConnString: dsn})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a := newEnvOn(t, open(), nil)
	b := newEnvOn(t, open(), a)

	form := url.Values{"grant_type": {"client_credentials"}, "audience": {"orders"},
		"client_assertion_type": {oauth.AssertionTypeJWTBearer}, "client_assertion": {a.assertion(webID, tokenURL, time.Minute)}}
	if r := a.do(request{form: form}); r.status != 200 {
		t.Fatalf("assertion at the first server: %d %v", r.status, r.body)
	}
	if r := b.do(request{form: form}); r.status != 400 || r.body["error"] != "invalid_client" {
		t.Fatalf("the same assertion at the second server: %d %v", r.status, r.body)
	}

	// A client created through the first handle gets tokens from the
	// second server.
	stray := &datastore.OAuthClient{SPIFFEID: spiffeid.RequireFromString(strayID), Audiences: []string{"orders"}}
	if err := a.store.PutOAuthClient(t.Context(), stray); err != nil {
		t.Fatal(err)
	}
	poll(t, "a token for a client created through the other handle", func() bool {
		return b.do(request{form: url.Values{"grant_type": {"client_credentials"}, "audience": {"orders"}}, certs: b.cert(strayID, time.Hour)}).status == 200
	})

	// A token revoked at the first server is inactive at the second.
	tok := a.token(webID, url.Values{"audience": {"orders"}})
	if r := a.do(request{path: oauth.RevokePath, form: url.Values{"token": {tok}}, certs: a.cert(webID, time.Hour)}); r.status != 200 {
		t.Fatalf("revoke: %d %v", r.status, r.body)
	}
	poll(t, "the revocation at the other server", func() bool {
		r := b.do(request{path: oauth.IntrospectPath, form: url.Values{"token": {tok}}, certs: b.cert(apiID, time.Hour)})
		return r.status == 200 && r.body["active"] == false
	})
}

// poll calls ok until it holds, for at most 10 seconds.
func poll(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
	}
}

// TestClientRevocationCoversEveryRole: a client revocation covers the
// tokens that name the client as sub or as an actor, not only as
// client_id, and its earlier JWT-SVIDs, as subject tokens and as client
// assertions: exchange cannot launder a revoked client's tokens.
func TestClientRevocationCoversEveryRole(t *testing.T) {
	e := newEnv(t)
	exchange := func(actor, subject, subjectType, aud string) response {
		t.Helper()
		return e.do(request{form: url.Values{"grant_type": {oauth.GrantTokenExchange}, "subject_token": {subject},
			"subject_token_type": {subjectType}, "audience": {aud}}, certs: e.cert(actor, time.Hour)})
	}
	introspect := func(token string) any {
		t.Helper()
		r := e.do(request{path: oauth.IntrospectPath, form: url.Values{"token": {token}}, certs: e.cert(dbID, time.Hour)})
		if r.status != 200 {
			t.Fatalf("introspect: %d %v", r.status, r.body)
		}
		return r.body["active"]
	}
	webTok := e.token(webID, url.Values{"audience": {apiID}})
	r := exchange(apiID, webTok, oauth.TokenTypeAccessToken, dbID)
	if r.status != 200 {
		t.Fatalf("exchange: %d %v", r.status, r.body)
	}
	exchanged := r.body["access_token"].(string) // sub web, client_id api
	webSVID := e.assertion(webID, apiID, time.Hour)
	webAssertion := e.assertion(webID, tokenURL, time.Hour)

	if err := e.store.PutRevocation(t.Context(), &datastore.Revocation{ClientID: webID, RevokedAt: t0, ExpiresAt: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	poll(t, "the revocation of web", func() bool { return introspect(webTok) == false })
	if got := introspect(exchanged); got != false {
		t.Fatalf("a token with sub web, issued before web's revocation, introspects %v", got)
	}
	if r := exchange(dbID, exchanged, oauth.TokenTypeAccessToken, "https://ledger.example.org/"); r.status != 400 || r.body["error"] != "invalid_request" {
		t.Fatalf("exchange of a token with a revoked sub: %d %v", r.status, r.body)
	}
	if r := exchange(apiID, webSVID, oauth.TokenTypeJWT, dbID); r.status != 400 || r.body["error"] != "invalid_request" {
		t.Fatalf("exchange of a revoked client's earlier JWT-SVID: %d %v", r.status, r.body)
	}
	if r := e.do(request{form: url.Values{"grant_type": {"client_credentials"}, "audience": {"orders"},
		"client_assertion_type": {oauth.AssertionTypeJWTBearer}, "client_assertion": {webAssertion}}}); r.status != 400 || r.body["error"] != "invalid_client" {
		t.Fatalf("a revoked client's earlier client assertion: %d %v", r.status, r.body)
	}

	// Credentials issued after the revocation's second are valid.
	e.clk.Set(t0.Add(2 * time.Second))
	if r := exchange(apiID, e.assertion(webID, apiID, time.Hour), oauth.TokenTypeJWT, dbID); r.status != 200 {
		t.Fatalf("exchange of a later JWT-SVID: %d %v", r.status, r.body)
	}
	if r := e.do(request{form: url.Values{"grant_type": {"client_credentials"}, "audience": {"orders"},
		"client_assertion_type": {oauth.AssertionTypeJWTBearer}, "client_assertion": {e.assertion(webID, tokenURL, time.Hour)}}}); r.status != 200 {
		t.Fatalf("a later client assertion: %d %v", r.status, r.body)
	}

	// Revoking an actor covers the tokens issued through it. (web's
	// X.509-SVIDs count as issued at their NotBefore, x509ca.Backdate
	// early: its next one to authenticate is one signed after that.)
	e.clk.Set(t0.Add(x509ca.Backdate + 2*time.Second))
	webTok = e.token(webID, url.Values{"audience": {apiID}})
	r = exchange(apiID, webTok, oauth.TokenTypeAccessToken, dbID)
	if r.status != 200 {
		t.Fatalf("exchange: %d %v", r.status, r.body)
	}
	r = exchange(dbID, r.body["access_token"].(string), oauth.TokenTypeAccessToken, "https://ledger.example.org/")
	if r.status != 200 {
		t.Fatalf("second hop: %d %v", r.status, r.body)
	}
	secondHop := r.body["access_token"].(string) // sub web, client_id db, act db, api
	if err := e.store.PutRevocation(t.Context(), &datastore.Revocation{ClientID: apiID, RevokedAt: e.clk.Now(), ExpiresAt: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	poll(t, "the revocation of api", func() bool { return introspect(secondHop) == false })
	if got := introspect(webTok); got != true {
		t.Fatalf("web's own token after api's revocation: %v", got)
	}
}

// TestClientRevocationCoversEveryMethod: a client revocation refuses
// the client's earlier credentials at every endpoint, whichever client
// authentication method presents them: a stolen X.509-SVID of a revoked
// client gets no more tokens than its JWT-SVIDs do. Credentials issued
// after the revocation authenticate.
func TestClientRevocationCoversEveryMethod(t *testing.T) {
	methods := []struct {
		name string
		// auth authenticates a request with form as web, with a
		// credential issued now.
		auth func(e *env, form url.Values) request
	}{
		{name: "mTLS", auth: func(e *env, form url.Values) request {
			return request{form: form, certs: e.cert(webID, time.Hour)}
		}},
		{name: "client assertion", auth: func(e *env, form url.Values) request {
			form.Set("client_assertion_type", oauth.AssertionTypeJWTBearer)
			form.Set("client_assertion", e.assertion(webID, tokenURL, time.Hour))
			return request{form: form}
		}},
	}
	for _, m := range methods {
		t.Run(m.name, func(t *testing.T) {
			e := newEnv(t)
			grant := func() url.Values {
				return url.Values{"grant_type": {"client_credentials"}, "audience": {"orders"}}
			}
			webTok := e.token(webID, url.Values{"audience": {apiID}})
			earlier := map[string]request{
				oauth.TokenPath:      m.auth(e, grant()),
				oauth.IntrospectPath: m.auth(e, url.Values{"token": {webTok}}),
				oauth.RevokePath:     m.auth(e, url.Values{"token": {webTok}}),
			}
			if r := e.do(m.auth(e, grant())); r.status != http.StatusOK {
				t.Fatalf("before the revocation: %d %v", r.status, r.body["error"])
			}

			if err := e.store.PutRevocation(t.Context(), &datastore.Revocation{ClientID: webID, RevokedAt: t0, ExpiresAt: t0.Add(time.Hour)}); err != nil {
				t.Fatal(err)
			}
			poll(t, "the revocation of web", func() bool {
				r := e.do(request{path: oauth.IntrospectPath, form: url.Values{"token": {webTok}}, certs: e.cert(apiID, time.Hour)})
				return r.status == http.StatusOK && r.body["active"] == false
			})
			for path, req := range earlier {
				req.path = path
				if r := e.do(req); r.status != http.StatusBadRequest || r.body["error"] != "invalid_client" {
					t.Errorf("%s with a credential of the revoked client issued before its revocation: %d %v, want 400 invalid_client", path, r.status, r.body["error"])
				}
			}

			// X.509-SVIDs count as issued at their NotBefore, which Writ
			// sets x509ca.Backdate early.
			e.clk.Set(t0.Add(x509ca.Backdate + 2*time.Second))
			if r := e.do(m.auth(e, grant())); r.status != http.StatusOK {
				t.Fatalf("a credential issued after the revocation: %d %v", r.status, r.body["error"])
			}
		})
	}
}

// TestClientAssertionAudience: a client assertion must name the token
// endpoint as its only audience. A JWT-SVID that also names a resource
// server was handed to it, which could otherwise use it once as the
// client.
func TestClientAssertionAudience(t *testing.T) {
	tests := []struct {
		name string
		aud  []string
		ok   bool
	}{
		{name: "token endpoint only", aud: []string{tokenURL}, ok: true},
		{name: "token endpoint and a resource server", aud: []string{tokenURL, apiID}},
		{name: "a resource server and the token endpoint", aud: []string{"orders", tokenURL}},
		{name: "token endpoint twice", aud: []string{tokenURL, tokenURL}},
		{name: "issuer", aud: []string{issuer}},
	}
	e := newEnv(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, _, err := jwtsvid.Sign(e.clk.Now(), e.jwt, spiffeid.RequireFromString(webID), tt.aud, time.Minute, t0.Add(24*time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			r := e.do(request{form: url.Values{"grant_type": {"client_credentials"}, "audience": {"orders"},
				"client_assertion_type": {oauth.AssertionTypeJWTBearer}, "client_assertion": {a}}})
			switch {
			case tt.ok && r.status != http.StatusOK:
				t.Fatalf("aud %v: %d %v, want a token", tt.aud, r.status, r.body["error"])
			case !tt.ok && (r.status != http.StatusBadRequest || r.body["error"] != "invalid_client"):
				t.Fatalf("aud %v: %d %v, want 400 invalid_client", tt.aud, r.status, r.body["error"])
			}
		})
	}
}

// TestAssertionReplayWithTwinSignature: a used client assertion whose
// ECDSA signature is rewritten from (r, s) to (r, n-s), which verifies
// as well, is still a replay.
func TestAssertionReplayWithTwinSignature(t *testing.T) {
	e := newEnv(t)
	assertion := e.assertion(webID, tokenURL, time.Minute)
	use := func(a string) response {
		return e.do(request{form: url.Values{"grant_type": {"client_credentials"}, "audience": {"orders"},
			"client_assertion_type": {oauth.AssertionTypeJWTBearer}, "client_assertion": {a}}})
	}
	if r := use(assertion); r.status != 200 {
		t.Fatalf("first use: %d %v", r.status, r.body)
	}
	dot := strings.LastIndexByte(assertion, '.')
	sig, err := base64.RawURLEncoding.DecodeString(assertion[dot+1:])
	if err != nil || len(sig) != 64 {
		t.Fatalf("signature of %d bytes: %v", len(sig), err)
	}
	s := new(big.Int).SetBytes(sig[32:])
	s.Sub(elliptic.P256().Params().N, s)
	s.FillBytes(sig[32:])
	twin := assertion[:dot+1] + base64.RawURLEncoding.EncodeToString(sig)
	if twin == assertion {
		t.Fatal("the rewritten signature is the same")
	}
	if _, err := jwtsvid.Validate(twin, e.bundle(), []string{tokenURL}, e.clk.Now()); err != nil {
		t.Fatalf("the rewritten signature does not verify, so the test proves nothing: %v", err)
	}
	if r := use(twin); r.status != 400 || r.body["error"] != "invalid_client" {
		t.Fatalf("replay with the twin signature: %d %v", r.status, r.body["error"])
	}
}

// bundle is the trust domain's bundle with the JWT authority.
func (e *env) bundle() *spiffebundle.Bundle {
	b := spiffebundle.New(td)
	if err := b.AddJWTAuthority(e.jwt.ID, e.jwt.Signer.Public()); err != nil {
		e.t.Fatal(err)
	}
	return b
}

// TestRevokeQuota: a client stores at most RevokeBurst revocations at
// once, then RevokeRate a second, and at most MaxRevocationsPerClient
// listed; beyond, /revoke answers 503 with Retry-After and the token
// stays valid. Other clients are not affected.
func TestRevokeQuota(t *testing.T) {
	e := newEnv(t)
	revoke := func(id, token string) response {
		t.Helper()
		return e.do(request{path: oauth.RevokePath, form: url.Values{"token": {token}}, certs: e.cert(id, time.Hour)})
	}
	refused := func(r response, retryAfter string) {
		t.Helper()
		if r.status != http.StatusServiceUnavailable || r.body["error"] != "temporarily_unavailable" || r.header.Get("Retry-After") != retryAfter {
			t.Fatalf("over the quota: %d %v, Retry-After %q, want %s", r.status, r.body["error"], r.header.Get("Retry-After"), retryAfter)
		}
	}
	active := func(token string) any {
		t.Helper()
		return e.do(request{path: oauth.IntrospectPath, form: url.Values{"token": {token}}, certs: e.cert(dbID, time.Hour)}).body["active"]
	}
	listed := 0
	ok := func(id, token string) {
		t.Helper()
		if r := revoke(id, token); r.status != 200 {
			t.Fatalf("revocation %d: %d %v", listed+1, r.status, r.body["error"])
		}
		listed++
	}
	for range oauth.RevokeBurst {
		ok(webID, e.token(webID, url.Values{"audience": {"orders"}}))
	}
	tok := e.token(webID, url.Values{"audience": {"orders"}})
	refused(revoke(webID, tok), "1")
	if active(tok) != true {
		t.Fatal("a token whose revocation was refused is inactive")
	}
	e.clk.Advance(time.Second)
	ok(webID, tok)
	for listed < oauth.MaxRevocationsPerClient {
		e.clk.Advance(time.Second / oauth.RevokeRate)
		ok(webID, e.token(webID, url.Values{"audience": {"orders"}}))
	}
	e.clk.Advance(time.Second)
	tok = e.token(webID, url.Values{"audience": {"orders"}})
	// The first revocations leave the list at t0 + 5m (token TTL) + 2 leeways.
	wait := t0.Add(5*time.Minute + 2*jwtsvid.Leeway).Sub(e.clk.Now())
	refused(revoke(webID, tok), strconv.Itoa(int(wait/time.Second)))
	if r := revoke(apiID, e.token(apiID, url.Values{"audience": {dbID}})); r.status != 200 {
		t.Fatalf("another client's revocation: %d %v", r.status, r.body["error"])
	}
	e.clk.Advance(wait)
	if r := revoke(webID, e.token(webID, url.Values{"audience": {"orders"}})); r.status != 200 {
		t.Fatalf("revocation once the first ones expired: %d %v", r.status, r.body["error"])
	}
}

// TestTokenExchangeKeepsSubjectScopes: a token exchanged from an access
// token gets only the scopes both the subject token holds and the actor
// is granted; one exchanged from a JWT-SVID, which holds no scope, gets
// the actor's grants.
func TestTokenExchangeKeepsSubjectScopes(t *testing.T) {
	e := newEnv(t)
	if err := e.store.PutOAuthClient(t.Context(), &datastore.OAuthClient{SPIFFEID: spiffeid.RequireFromString(apiID),
		Audiences: []string{dbID}, Scopes: []string{"db:read", "read", "write"}}); err != nil {
		t.Fatal(err)
	}
	exchange := func(subject, subjectType, scope string) response {
		t.Helper()
		f := url.Values{"grant_type": {oauth.GrantTokenExchange}, "subject_token": {subject},
			"subject_token_type": {subjectType}, "audience": {dbID}}
		if scope != "" {
			f.Set("scope", scope)
		}
		return e.do(request{form: f, certs: e.cert(apiID, time.Hour)})
	}
	readOnly := e.token(webID, url.Values{"audience": {apiID}, "scope": {"read"}})
	poll(t, "api's new grants", func() bool {
		return exchange(e.assertion(webID, apiID, time.Minute), oauth.TokenTypeJWT, "").body["scope"] == "db:read read write"
	})
	if r := exchange(readOnly, oauth.TokenTypeAccessToken, ""); r.status != 200 || r.body["scope"] != "read" {
		t.Fatalf("exchange of a read token: %d %v", r.status, r.body["scope"])
	}
	if r := exchange(readOnly, oauth.TokenTypeAccessToken, "write"); r.status != 400 || r.body["error"] != "invalid_scope" {
		t.Fatalf("exchange of a read token for write: %d %v", r.status, r.body)
	}
	if r := exchange(readOnly, oauth.TokenTypeAccessToken, "read"); r.status != 200 || r.body["scope"] != "read" {
		t.Fatalf("exchange of a read token for read: %d %v", r.status, r.body["scope"])
	}
}

// TestAssertionRecordOutlivesSkew: the record of a used assertion is kept
// until exp plus twice the leeway, so a server whose clock runs a leeway
// ahead and prunes it does not let a server a leeway behind, which still
// accepts the assertion, accept it again.
func TestAssertionRecordOutlivesSkew(t *testing.T) {
	e := newEnv(t)
	assertion := e.assertion(webID, tokenURL, time.Minute)
	// At /introspect, where no token's lifetime is bound to the
	// assertion's, it authenticates up to exp+Leeway.
	use := func() response {
		return e.do(request{path: oauth.IntrospectPath, form: url.Values{"token": {"x"},
			"client_assertion_type": {oauth.AssertionTypeJWTBearer}, "client_assertion": {assertion}}})
	}
	if r := use(); r.status != 200 {
		t.Fatalf("first use: %d %v", r.status, r.body["error"])
	}
	// This server's clock is just before exp+Leeway: it still accepts
	// the assertion's times. Another's, a leeway ahead, prunes.
	exp := t0.Add(time.Minute)
	e.clk.Set(exp.Add(jwtsvid.Leeway - time.Second))
	pruner := e.store.(interface {
		PruneClientAssertions(ctx context.Context, now time.Time) (int, error)
	})
	if _, err := pruner.PruneClientAssertions(t.Context(), e.clk.Now().Add(jwtsvid.Leeway)); err != nil {
		t.Fatal(err)
	}
	if r := use(); r.status != 400 || r.body["error"] != "invalid_client" {
		t.Fatalf("replay after a clock a leeway ahead pruned: %d %v", r.status, r.body["error"])
	}
}

// TestTaintedCAAuthenticatesNothing: once an X.509 CA is tainted (its key
// leaked: whoever holds it can sign an X.509-SVID for any client), an
// X.509-SVID it signed authenticates no client over mTLS, as on the
// remote admin API, while the CA is still in the bundle. Client
// assertions, signed by an untainted JWT key, still authenticate.
func TestTaintedCAAuthenticatesNothing(t *testing.T) {
	e := newEnv(t)
	grant := url.Values{"grant_type": {"client_credentials"}, "audience": {"orders"}}
	if r := e.do(request{form: grant, certs: e.cert(webID, time.Hour)}); r.status != http.StatusOK {
		t.Fatalf("before the taint: %d %v", r.status, r.body["error"])
	}
	dbTok := e.token(dbID, url.Values{"audience": {"https://ledger.example.org/"}})

	st, ok := e.store.(interface {
		PutCAKey(ctx context.Context, k *datastore.CAKey) error
	})
	if !ok {
		t.Fatal("the store keeps no CA keys")
	}
	if err := st.PutCAKey(t.Context(), &datastore.CAKey{ID: "x509-1", Kind: datastore.CAKeyX509, State: datastore.CAKeyTainted,
		ServerID: "s1", KeyType: "ec-p256", CertDER: e.ca.Root.Raw, NotBefore: e.ca.Root.NotBefore, NotAfter: e.ca.Root.NotAfter,
		SignedUntil: t0}); err != nil {
		t.Fatal(err)
	}
	// A later change that shows when the server has reloaded.
	if err := e.store.PutRevocation(t.Context(), &datastore.Revocation{ClientID: dbID, RevokedAt: t0, ExpiresAt: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	probes := 0
	poll(t, "the reload", func() bool {
		probes++ // each probe's assertion differs: one use each
		form := url.Values{"token": {dbTok}, "client_assertion_type": {oauth.AssertionTypeJWTBearer},
			"client_assertion": {e.assertion(apiID, tokenURL, time.Duration(probes)*time.Second)}}
		r := e.do(request{path: oauth.IntrospectPath, form: form})
		return r.status == http.StatusOK && r.body["active"] == false
	})

	for _, path := range []string{oauth.TokenPath, oauth.IntrospectPath, oauth.RevokePath} {
		form := url.Values{"grant_type": {"client_credentials"}, "audience": {"orders"}, "token": {dbTok}}
		if path != oauth.TokenPath {
			form = url.Values{"token": {dbTok}}
		}
		if r := e.do(request{path: path, form: form, certs: e.cert(webID, time.Hour)}); r.status != http.StatusBadRequest || r.body["error"] != "invalid_client" {
			t.Errorf("%s with an X.509-SVID of the tainted CA: %d %v, want 400 invalid_client", path, r.status, r.body)
		}
	}
	form := url.Values{"grant_type": {"client_credentials"}, "audience": {"orders"},
		"client_assertion_type": {oauth.AssertionTypeJWTBearer}, "client_assertion": {e.assertion(webID, tokenURL, time.Minute)}}
	if r := e.do(request{form: form}); r.status != http.StatusOK {
		t.Errorf("client assertion after the taint: %d %v", r.status, r.body["error"])
	}
}
