package authz_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

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
