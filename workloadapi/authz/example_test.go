package authz_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/agent/revocation"
	"writ.dev/writ/ca/jwtsvid"
	"writ.dev/writ/workloadapi/authz"
)

// Policies allow exact IDs, whole trust domains, or a path and what lies
// below it, segment by segment.
func ExamplePathPrefix() {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	policy := authz.Any(
		authz.MustPathPrefix(td, "/ns/prod"),
		authz.IDs(spiffeid.RequireFromString("spiffe://partner.test/billing")),
	)
	for _, id := range []string{
		"spiffe://example.org/ns/prod",
		"spiffe://example.org/ns/prod/web",
		"spiffe://example.org/ns/production",
		"spiffe://partner.test/billing",
		"spiffe://partner.test/billing/x",
	} {
		fmt.Println(id, policy.Allows(spiffeid.RequireFromString(id)))
	}
	// Output:
	// spiffe://example.org/ns/prod true
	// spiffe://example.org/ns/prod/web true
	// spiffe://example.org/ns/production false
	// spiffe://partner.test/billing true
	// spiffe://partner.test/billing/x false
}

// The HTTP middleware admits a request whose bearer JWT-SVID validates
// against the JWT bundle (in a service: a go-spiffe workloadapi.JWTSource)
// and whose subject the policy allows, and gives the handler the caller.
func ExampleJWTAuthorizer_Middleware() {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	web := spiffeid.RequireFromPath(td, "/web")

	// A signing key and its bundle, as the CA and the Workload API have.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	bundle := jwtbundle.New(td)
	_ = bundle.AddJWTAuthority("k1", key.Public())

	a, err := authz.NewJWTAuthorizer(authz.JWTConfig{
		Bundles:  bundle,
		Audience: []string{"greeter"},
		Policy:   authz.IDs(web),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	h := a.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		caller, _ := authz.CallerID(r.Context())
		fmt.Fprintf(w, "hello %s", caller)
	}))

	now := time.Now()
	call := func(sub spiffeid.ID, aud string) {
		token, _, _ := jwtsvid.Sign(now, jwtsvid.Key{ID: "k1", Signer: key}, sub, []string{aud}, 5*time.Minute, now.Add(time.Hour))
		req := httptest.NewRequest(http.MethodGet, "/hello", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		fmt.Println(rec.Code, rec.Header().Get("WWW-Authenticate"), strings.TrimSpace(rec.Body.String()))
	}
	call(web, "greeter")
	call(web, "another-service")
	call(spiffeid.RequireFromPath(td, "/db"), "greeter")
	// Output:
	// 200  hello spiffe://example.org/web
	// 401 Bearer error="invalid_token", error_description="audience mismatch" audience mismatch
	// 403  caller not allowed
}

// An OAuth 2.0 resource server validates the access tokens Writ's server
// issues (RFC 9068) locally: signature by the trust domain's JWT
// authorities, typ at+jwt, audience, expiry, required scopes, and the
// revocation list the agent pushes (here a list of its own).
func ExampleAccessTokenAuthorizer_Middleware() {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	bundle := jwtbundle.New(td)
	_ = bundle.AddJWTAuthority("k1", key.Public())
	revoked := revocation.New(nil) // in a service: a revocationapi.Client

	a, err := authz.NewAccessTokenAuthorizer(authz.AccessTokenConfig{
		TrustDomain: td,     // the authorization server's: only its keys sign tokens
		Bundles:     bundle, // in a service: a go-spiffe workloadapi.BundleSource
		Audience:    []string{"https://orders.example.org"},
		Scopes:      []string{"orders:read"},
		Revocations: revoked,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	h := a.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, _ := authz.AccessTokenFrom(r.Context())
		fmt.Fprintf(w, "orders of %s for %s", tok.Subject, tok.ClientID)
	}))

	now := time.Now()
	signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key},
		(&jose.SignerOptions{}).WithType("at+jwt").WithHeader("kid", "k1"))
	issue := func(jti, scope string) string {
		claims, _ := json.Marshal(map[string]any{
			"iss": "https://auth.example.org", "sub": "spiffe://example.org/web", "client_id": "spiffe://example.org/web",
			"aud": "https://orders.example.org", "scope": scope, "jti": jti, "iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(),
		})
		jws, _ := signer.Sign(claims)
		token, _ := jws.CompactSerialize()
		return token
	}
	call := func(token string) {
		req := httptest.NewRequest(http.MethodGet, "/orders", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		fmt.Println(rec.Code, rec.Header().Get("WWW-Authenticate"), strings.TrimSpace(rec.Body.String()))
	}
	call(issue("t1", "orders:read orders:write"))
	call(issue("t2", "orders:write"))
	revoked.Add([]revocation.Revocation{{JTI: "t1", RevokedAt: now, ExpiresAt: now.Add(5 * time.Minute)}})
	call(issue("t1", "orders:read orders:write"))
	// Output:
	// 200  orders of spiffe://example.org/web for spiffe://example.org/web
	// 403 Bearer error="insufficient_scope", scope="orders:read" insufficient scope
	// 401 Bearer error="invalid_token", error_description="invalid token" invalid token
}
