package integration_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// TestIntegrationOIDCDiscoveryAndBundleEndpoint: a gateway that knows only
// the issuer URL (coreos/go-oidc, a widely used OIDC client) discovers the
// JWKS and validates a JWT-SVID from a real agent; go-spiffe's federation
// client fetches the bundle from the https_spiffe bundle endpoint,
// authenticating it by the server's SPIFFE ID.
func TestIntegrationOIDCDiscoveryAndBundleEndpoint(t *testing.T) {
	oidcAddr := freePort(t)
	issuer := "http://" + oidcAddr
	e := newNodeEnv(t, "--jwt-issuer", issuer, "--oidc-bind-address", oidcAddr, "--oidc-insecure-http",
		"--federation-bind-address", "127.0.0.1:0")
	agentID := "spiffe://example.org/writ/agent/a"
	a := startAgent(t, e.addr, filepath.Join(e.dir, "a"), e.bundle, e.token(agentID))
	e.entry("spiffe://example.org/billing", agentID)
	waitSVIDs(t, a, []string{"spiffe://example.org/billing"})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svid, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "payments-gateway"}, socketAddr(a))
	if err != nil {
		t.Fatal(err)
	}

	provider, err := oidc.NewProvider(ctx, issuer)
	if err != nil {
		t.Fatalf("OIDC discovery: %v", err)
	}
	verifier := provider.Verifier(&oidc.Config{ClientID: "payments-gateway"})
	tok, err := verifier.Verify(ctx, svid.Marshal())
	if err != nil {
		t.Fatalf("the gateway refused the JWT-SVID: %v", err)
	}
	if tok.Subject != "spiffe://example.org/billing" || tok.Issuer != issuer {
		t.Fatalf("token sub %q iss %q", tok.Subject, tok.Issuer)
	}
	if _, err := provider.Verifier(&oidc.Config{ClientID: "another-gateway"}).Verify(ctx, svid.Marshal()); err == nil {
		t.Fatal("a token for another audience was accepted")
	}

	// The bundle endpoint, authenticated as the server.
	fedAddr := logField(t, e.server, "federation_address")
	pemBundle, err := os.ReadFile(e.bundle)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := x509bundle.Parse(td, pemBundle)
	if err != nil {
		t.Fatal(err)
	}
	b, err := federation.FetchBundle(ctx, td, "https://"+fedAddr+"/", federation.WithSPIFFEAuth(roots, spiffeid.RequireFromString("spiffe://example.org/writ/server")))
	if err != nil {
		t.Fatalf("fetch the bundle from the bundle endpoint: %v", err)
	}
	if seq, ok := b.SequenceNumber(); !ok || seq == 0 {
		t.Errorf("bundle sequence %d %v", seq, ok)
	}
	if hint, ok := b.RefreshHint(); !ok || hint <= 0 {
		t.Errorf("bundle refresh hint %s %v", hint, ok)
	}
	if len(b.JWTAuthorities()) == 0 || len(b.X509Authorities()) == 0 {
		t.Error("the fetched bundle lacks X.509 or JWT authorities")
	}
	if _, err := federation.FetchBundle(ctx, td, "https://"+fedAddr+"/", federation.WithSPIFFEAuth(roots, spiffeid.RequireFromString("spiffe://example.org/other"))); err == nil {
		t.Fatal("the bundle endpoint was accepted under another SPIFFE ID")
	}
}
