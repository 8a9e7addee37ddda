package authz_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"writ.dev/writ/agent/revocation"
	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/jwtsvid"
	"writ.dev/writ/workloadapi/authz"
)

const (
	rsAudience = "https://orders.example.org"
	issuer     = "https://auth.example.org"
	clientID   = "spiffe://example.org/web"
)

// signJWS signs header and claims with key (ES256) into a compact JWS.
func signJWS(tb testing.TB, key crypto.Signer, header, claims map[string]any) string {
	tb.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			tb.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signed := enc(header) + "." + enc(claims)
	sum := sha256.Sum256([]byte(signed))
	r, s, err := ecdsa.Sign(rand.Reader, key.(*ecdsa.PrivateKey), sum[:])
	if err != nil {
		tb.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// accessClaims are the claims of a valid access token at now.
func accessClaims(now time.Time) map[string]any {
	return map[string]any{
		"iss":       issuer,
		"sub":       clientID,
		"aud":       []string{rsAudience, "https://other.example.org"},
		"scope":     "orders:read orders:write",
		"client_id": clientID,
		"jti":       "tok-1",
		"iat":       now.Unix(),
		"exp":       now.Add(5 * time.Minute).Unix(),
	}
}

func thumbprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// accessEnv is an AccessTokenAuthorizer of td requiring orders:read,
// with a revocation list, whose bundle source also holds the bundle of a
// federated trust domain, evil.
type accessEnv struct {
	pki     *pki
	evil    *pki
	clock   *fakeclock.Clock
	revs    *revocation.List
	authz   *authz.AccessTokenAuthorizer
	handler http.Handler
}

func newAccessEnv(t *testing.T, cacheSize int) *accessEnv {
	t.Helper()
	e := &accessEnv{pki: newPKI(t, td), evil: newPKI(t, evilTD), clock: fakeclock.New(t0)}
	e.revs = revocation.New(e.clock)
	var err error
	e.authz, err = authz.NewAccessTokenAuthorizer(authz.AccessTokenConfig{
		TrustDomain:    td,
		Bundles:        jwtbundle.NewSet(e.pki.jwtBundle(), e.evil.jwtBundle()),
		Audience:       []string{rsAudience},
		Issuer:         issuer,
		Scopes:         []string{"orders:read"},
		Revocations:    e.revs,
		Clock:          e.clock,
		Logger:         slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		TokenCacheSize: cacheSize,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.handler = e.authz.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := authz.AccessTokenFrom(r.Context())
		id, idOK := authz.CallerID(r.Context())
		if !ok || !idOK || id != tok.Subject {
			http.Error(w, "no token in the context", http.StatusInternalServerError)
			return
		}
		w.Write([]byte(tok.ClientID + " " + strings.Join(tok.Scopes, ",")))
	}))
	return e
}

func (e *accessEnv) sign(t *testing.T, edit func(h, c map[string]any)) string {
	t.Helper()
	h := map[string]any{"alg": "ES256", "kid": e.pki.jwtKey.ID, "typ": "at+jwt"}
	c := accessClaims(e.clock.Now())
	if edit != nil {
		edit(h, c)
	}
	return signJWS(t, e.pki.jwtKey.Signer, h, c)
}

// serve runs one request with token over a connection whose client
// certificate is peer (none if nil).
func (e *accessEnv) serve(token string, peer *x509.Certificate) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, "/orders", nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if peer != nil {
		req.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{peer}}
	}
	rec := httptest.NewRecorder()
	e.handler.ServeHTTP(rec, req)
	return rec
}

// TestAccessTokenRules checks each rule of the access-token middleware:
// every refusal case passes all the other checks, so that it fails if
// its own check is removed.
func TestAccessTokenRules(t *testing.T) {
	e := newAccessEnv(t, 0)
	bound := e.pki.svid(t, "/web", time.Hour).Certificates[0]
	other := e.pki.svid(t, "/web", time.Hour).Certificates[0]
	now := e.clock.Now()
	e.revs.Add([]revocation.Revocation{
		{JTI: "revoked-jti", RevokedAt: now, ExpiresAt: now.Add(time.Hour)},
		{ClientID: "spiffe://example.org/fired", RevokedAt: now.Add(-time.Minute), ExpiresAt: now.Add(time.Hour)},
	})
	otherKey := mustKey(t)
	const (
		invalid = `Bearer error="invalid_token", error_description="invalid token"`
		noScope = `Bearer error="insufficient_scope", scope="orders:read"`
	)
	tests := []struct {
		name      string
		edit      func(h, c map[string]any)
		token     string // instead of a signed one
		peer      *x509.Certificate
		code      int
		challenge string
		body      string
	}{
		{name: "valid", code: 200, body: clientID + " orders:read,orders:write"},
		{name: "typ application/at+jwt", edit: func(h, _ map[string]any) { h["typ"] = "application/at+jwt" }, code: 200},
		{name: "no token", token: "-", code: 401, challenge: "Bearer"},
		{name: "JWT-SVID is not an access token", token: e.pki.token(t, "/web", []string{rsAudience}, now, time.Minute), code: 401, challenge: invalid},
		{name: "typ JWT", edit: func(h, _ map[string]any) { h["typ"] = "JWT" }, code: 401, challenge: invalid},
		{name: "no typ", edit: func(h, _ map[string]any) { delete(h, "typ") }, code: 401, challenge: invalid},
		{name: "signed by another key", token: signJWS(t, otherKey, map[string]any{"alg": "ES256", "kid": e.pki.jwtKey.ID, "typ": "at+jwt"}, accessClaims(now)), code: 401, challenge: invalid},
		{name: "expired", edit: func(_, c map[string]any) {
			c["iat"], c["exp"] = now.Add(-10*time.Minute).Unix(), now.Add(-jwtsvid.Leeway-time.Second).Unix()
		}, code: 401, challenge: `Bearer error="invalid_token", error_description="token expired"`},
		{name: "nbf ahead", edit: func(_, c map[string]any) { c["nbf"] = now.Add(time.Minute).Unix() }, code: 401, challenge: invalid},
		{name: "iat ahead", edit: func(_, c map[string]any) { c["iat"] = now.Add(time.Minute).Unix() }, code: 401, challenge: invalid},
		{name: "other audience", edit: func(_, c map[string]any) { c["aud"] = "https://other.example.org" }, code: 401,
			challenge: `Bearer error="invalid_token", error_description="audience mismatch"`},
		{name: "other issuer", edit: func(_, c map[string]any) { c["iss"] = "https://evil.example.org" }, code: 401, challenge: invalid},
		{name: "no client_id", edit: func(_, c map[string]any) { delete(c, "client_id") }, code: 401, challenge: invalid},
		{name: "no jti", edit: func(_, c map[string]any) { delete(c, "jti") }, code: 401, challenge: invalid},
		{name: "no iat", edit: func(_, c map[string]any) { delete(c, "iat") }, code: 401, challenge: invalid},
		{name: "scope missing", edit: func(_, c map[string]any) { c["scope"] = "orders:write" }, code: 403, challenge: noScope},
		{name: "no scope claim", edit: func(_, c map[string]any) { delete(c, "scope") }, code: 403, challenge: noScope},
		{name: "scope as a prefix", edit: func(_, c map[string]any) { c["scope"] = "orders:readall" }, code: 403, challenge: noScope},
		{name: "bound, same certificate", edit: func(_, c map[string]any) { c["cnf"] = map[string]any{"x5t#S256": thumbprint(bound)} }, peer: bound, code: 200},
		{name: "bound, another certificate", edit: func(_, c map[string]any) { c["cnf"] = map[string]any{"x5t#S256": thumbprint(bound)} }, peer: other, code: 401, challenge: invalid},
		{name: "bound, no certificate", edit: func(_, c map[string]any) { c["cnf"] = map[string]any{"x5t#S256": thumbprint(bound)} }, code: 401, challenge: invalid},
		{name: "bound by an unknown method", edit: func(_, c map[string]any) { c["cnf"] = map[string]any{"jkt": "abc"} }, peer: bound, code: 401, challenge: invalid},
		{name: "not bound, any certificate", peer: other, code: 200},
		{name: "revoked jti", edit: func(_, c map[string]any) { c["jti"] = "revoked-jti" }, code: 401, challenge: invalid},
		{name: "revoked client_id, issued before", edit: func(_, c map[string]any) {
			c["client_id"], c["iat"] = "spiffe://example.org/fired", now.Add(-2*time.Minute).Unix()
		}, code: 401, challenge: invalid},
		{name: "revoked subject, issued at the revocation", edit: func(_, c map[string]any) {
			c["sub"], c["iat"] = "spiffe://example.org/fired", now.Add(-time.Minute).Unix()
		}, code: 401, challenge: invalid},
		{name: "revoked client, issued after", edit: func(_, c map[string]any) { c["client_id"] = "spiffe://example.org/fired" }, code: 200},
		{name: "act chain", edit: func(_, c map[string]any) {
			c["act"] = map[string]any{"sub": "spiffe://example.org/gateway", "act": map[string]any{"sub": "spiffe://example.org/edge"}}
		}, code: 200},
		{name: "act without sub", edit: func(_, c map[string]any) { c["act"] = map[string]any{"client_id": "x"} }, code: 401, challenge: invalid},
		{name: "revoked client deep in the act chain, issued before", edit: func(_, c map[string]any) {
			c["iat"] = now.Add(-2 * time.Minute).Unix()
			c["act"] = map[string]any{"sub": "spiffe://example.org/gateway", "act": map[string]any{"sub": "spiffe://example.org/fired"}}
		}, code: 401, challenge: invalid},
		{name: "revoked client as an actor's client_id, issued before", edit: func(_, c map[string]any) {
			c["iat"] = now.Add(-2 * time.Minute).Unix()
			c["act"] = map[string]any{"sub": "spiffe://example.org/gateway", "client_id": "spiffe://example.org/fired"}
		}, code: 401, challenge: invalid},
		{name: "revoked client in the act chain, issued after", edit: func(_, c map[string]any) {
			c["act"] = map[string]any{"sub": "spiffe://example.org/fired"}
		}, code: 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok := tc.token
			switch tok {
			case "":
				tok = e.sign(t, tc.edit)
			case "-":
				tok = ""
			}
			rec := e.serve(tok, tc.peer)
			if rec.Code != tc.code {
				t.Fatalf("status %d (%q), want %d", rec.Code, rec.Body.String(), tc.code)
			}
			if got := rec.Header().Get("WWW-Authenticate"); got != tc.challenge {
				t.Errorf("WWW-Authenticate %q, want %q", got, tc.challenge)
			}
			if tc.body != "" && rec.Body.String() != tc.body {
				t.Errorf("body %q, want %q", rec.Body.String(), tc.body)
			}
		})
	}
}

// TestAccessTokenClaimsInContext checks what the handler is given.
func TestAccessTokenClaimsInContext(t *testing.T) {
	e := newAccessEnv(t, 0)
	peer := e.pki.svid(t, "/web", time.Hour).Certificates[0]
	tok := e.sign(t, func(_, c map[string]any) {
		c["cnf"] = map[string]any{"x5t#S256": thumbprint(peer)}
		c["act"] = map[string]any{"sub": "spiffe://example.org/gateway", "act": map[string]any{"sub": "spiffe://example.org/edge", "client_id": "spiffe://example.org/edge"}}
	})
	got, err := e.authz.Authenticate("Bearer "+tok, peer)
	if err != nil {
		t.Fatal(err)
	}
	if got.Subject.String() != clientID || got.ClientID != clientID || got.JTI != "tok-1" || got.Issuer != issuer || !got.Bound ||
		strings.Join(got.Scopes, " ") != "orders:read orders:write" || !got.IssuedAt.Equal(t0) || !got.Expiry.Equal(t0.Add(5*time.Minute)) {
		t.Errorf("token %+v", got)
	}
	if a := got.Actor; a == nil || a.Subject != "spiffe://example.org/gateway" || a.Actor == nil || a.Actor.Subject != "spiffe://example.org/edge" ||
		a.Actor.ClientID != "spiffe://example.org/edge" || a.Actor.Actor != nil {
		t.Errorf("actor %+v", got.Actor)
	}
	// A scope the token lacks: the token comes back with the error.
	got, err = e.authz.WithScopes("orders:admin").Authenticate("Bearer "+tok, peer)
	if !errors.Is(err, authz.ErrInsufficientScope) || got == nil {
		t.Errorf("WithScopes(orders:admin): %v, %v", got, err)
	}
}

// TestAccessTokenRevokedWhileCached: a token validated (and remembered)
// before its revocation is refused after it.
func TestAccessTokenRevokedWhileCached(t *testing.T) {
	for _, size := range []int{0, -1} {
		e := newAccessEnv(t, size)
		tok := e.sign(t, nil)
		if rec := e.serve(tok, nil); rec.Code != 200 {
			t.Fatalf("cache %d: before revocation: %d", size, rec.Code)
		}
		e.revs.Add([]revocation.Revocation{{JTI: "tok-1", RevokedAt: e.clock.Now(), ExpiresAt: e.clock.Now().Add(5 * time.Minute)}})
		if rec := e.serve(tok, nil); rec.Code != 401 {
			t.Errorf("cache %d: after revocation: %d", size, rec.Code)
		}
	}
}

// TestAccessTokenGRPC checks the interceptors: the certificate of the
// connection binds, a missing scope is PermissionDenied, anything else
// Unauthenticated.
func TestAccessTokenGRPC(t *testing.T) {
	e := newAccessEnv(t, 0)
	lis := bufconn.Listen(1 << 20)
	var seen *authz.AccessToken
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(e.authz.UnaryServerInterceptor(), func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			seen, _ = authz.AccessTokenFrom(ctx)
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(e.authz.StreamServerInterceptor()))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(lis)
	defer srv.Stop()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	call := func(tok string) codes.Code {
		ctx := context.Background()
		if tok != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
		}
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
		return status.Code(err)
	}
	if c := call(e.sign(t, nil)); c != codes.OK || seen == nil || seen.JTI != "tok-1" {
		t.Errorf("valid token: %v, %+v", c, seen)
	}
	if c := call(""); c != codes.Unauthenticated {
		t.Errorf("no token: %v", c)
	}
	if c := call(e.sign(t, func(_, c map[string]any) { c["scope"] = "orders:write" })); c != codes.PermissionDenied {
		t.Errorf("missing scope: %v", c)
	}
	// An insecure connection has no client certificate: a bound token is
	// refused.
	peer := e.pki.svid(t, "/web", time.Hour).Certificates[0]
	if c := call(e.sign(t, func(_, c map[string]any) { c["cnf"] = map[string]any{"x5t#S256": thumbprint(peer)} })); c != codes.Unauthenticated {
		t.Errorf("bound token without a certificate: %v", c)
	}
}

// TestAccessTokenBindingOverTLS: over real mTLS handshakes, a bound
// token is accepted from the certificate it is bound to only.
func TestAccessTokenBindingOverTLS(t *testing.T) {
	e := newAccessEnv(t, 0)
	serverSVID := e.pki.svid(t, "/orders", time.Hour, "orders.test")
	alice := e.pki.svid(t, "/web", time.Hour)
	mallory := e.pki.svid(t, "/web", time.Hour)
	lis, err := tls.Listen("tcp", "127.0.0.1:0", authz.ServerTLSConfig(newSource(serverSVID, e.pki.x509Bundle()), authz.TrustDomain(td)))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: e.handler, ErrorLog: nil}
	go srv.Serve(lis)
	defer srv.Close()
	url := "https://" + lis.Addr().String()
	tok := e.sign(t, func(_, c map[string]any) { c["cnf"] = map[string]any{"x5t#S256": thumbprint(alice.Certificates[0])} })
	get := func(svid *x509svid.SVID) int {
		tr := &http.Transport{TLSClientConfig: authz.ClientTLSConfig(newSource(svid, e.pki.x509Bundle()), authz.IDs(serverSVID.ID))}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest(http.MethodGet, url+"/orders", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := get(alice); c != 200 {
		t.Errorf("from the bound certificate: %d", c)
	}
	if c := get(mallory); c != 401 {
		t.Errorf("from another SVID of the same ID: %d", c)
	}
}

// TestAccessTokenFederatedSigner checks that a federated trust domain,
// whose bundle the resource server holds, cannot sign access tokens it
// accepts: a token signed by evil.org's own JWT key, for a subject in
// evil.org and otherwise valid (iss and aud ours), is refused, with and
// without the token cache; and so is one naming a subject of ours but
// signed by evil.org's key under its kid.
func TestAccessTokenFederatedSigner(t *testing.T) {
	for _, cache := range []int{0, -1} {
		e := newAccessEnv(t, cache)
		forged := func(sub string) string {
			c := accessClaims(e.clock.Now())
			c["sub"], c["client_id"] = sub, sub
			return signJWS(t, e.evil.jwtKey.Signer, map[string]any{"alg": "ES256", "kid": e.evil.jwtKey.ID, "typ": "at+jwt"}, c)
		}
		for _, sub := range []string{"spiffe://evil.org/x", clientID} {
			token := forged(sub)
			for range 2 { // the second time from the cache, if it had been remembered
				if rec := e.serve(token, nil); rec.Code != 401 {
					t.Errorf("cache %d, sub %s: %d %s", cache, sub, rec.Code, rec.Body)
				}
			}
			_, err := e.authz.Authenticate("Bearer "+token, nil)
			if !errors.Is(err, authz.ErrInvalidToken) {
				t.Errorf("cache %d, sub %s: %v", cache, sub, err)
			}
		}
		if _, err := e.authz.Authenticate("Bearer "+forged("spiffe://evil.org/x"), nil); !errors.Is(err, authz.ErrForeignTrustDomain) {
			t.Errorf("cache %d: %v, want ErrForeignTrustDomain", cache, err)
		}
		if rec := e.serve(e.sign(t, nil), nil); rec.Code != 200 {
			t.Errorf("cache %d: a token of ours: %d", cache, rec.Code)
		}
	}
}

func TestNewAccessTokenAuthorizerConfig(t *testing.T) {
	b := jwtbundle.New(td)
	for _, cfg := range []authz.AccessTokenConfig{
		{TrustDomain: td, Audience: []string{rsAudience}},
		{TrustDomain: td, Bundles: b},
		{Bundles: b, Audience: []string{rsAudience}},
		{TrustDomain: td, Bundles: b, Audience: []string{""}},
		{TrustDomain: td, Bundles: b, Audience: []string{rsAudience}, Scopes: []string{"a b"}},
		{TrustDomain: td, Bundles: b, Audience: []string{rsAudience}, Scopes: []string{`a"`}},
	} {
		if _, err := authz.NewAccessTokenAuthorizer(cfg); err == nil {
			t.Errorf("%+v: no error", cfg)
		}
	}
}

// BenchmarkAccessTokenAuthenticate times Authenticate of a remembered,
// certificate-bound access token checked against a 1,000-entry
// revocation list: the common case of a resource server.
func BenchmarkAccessTokenAuthenticate(b *testing.B) {
	e := &accessEnv{pki: newPKI(b, td), clock: fakeclock.New(t0)}
	e.revs = revocation.New(e.clock)
	var rs []revocation.Revocation
	for i := range 1000 {
		rs = append(rs, revocation.Revocation{JTI: fmt.Sprintf("revoked-%d", i), RevokedAt: t0, ExpiresAt: t0.Add(time.Hour)})
	}
	e.revs.Add(rs)
	a, err := authz.NewAccessTokenAuthorizer(authz.AccessTokenConfig{
		TrustDomain: td, Bundles: jwtbundle.NewSet(e.pki.jwtBundle()), Audience: []string{rsAudience}, Issuer: issuer,
		Scopes: []string{"orders:read"}, Revocations: e.revs, Clock: e.clock,
	})
	if err != nil {
		b.Fatal(err)
	}
	peer := e.pki.svid(b, "/web", time.Hour).Certificates[0]
	h := map[string]any{"alg": "ES256", "kid": e.pki.jwtKey.ID, "typ": "at+jwt"}
	c := accessClaims(t0)
	c["cnf"] = map[string]any{"x5t#S256": thumbprint(peer)}
	header := "Bearer " + signJWS(b, e.pki.jwtKey.Signer, h, c)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Authenticate(header, peer); err != nil {
			b.Fatal(err)
		}
	}
}
