package integration_test

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"writ.dev/writ/workloadapi/authz"
	"writ.dev/writ/workloadapi/revocationapi"
)

// oauthAddress returns the OAuth endpoint's address the server logged
// when ready.
func (p *serverProc) oauthAddress() string {
	p.t.Helper()
	for _, line := range strings.Split(p.log.String(), "\n") {
		if !strings.Contains(line, `msg="server ready"`) {
			continue
		}
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "oauth_address="); ok {
				return v
			}
		}
	}
	p.t.Fatalf("server logged no OAuth address:\n%s", tail(p.log.String(), 20))
	return ""
}

// fixedX509Source is one X.509-SVID and the bundles fetched with it.
type fixedX509Source struct {
	svid    *x509svid.SVID
	bundles *x509bundle.Set
}

func (s *fixedX509Source) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }
func (s *fixedX509Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.bundles.GetX509BundleForTrustDomain(td)
}

// svidSource fetches the agent's X.509-SVID of id for this process.
func svidSource(t *testing.T, p *agentProc, id string) *fixedX509Source {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	xc, err := workloadapi.FetchX509Context(ctx, socketAddr(p))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range xc.SVIDs {
		if s.ID.String() == id {
			return &fixedX509Source{svid: s, bundles: xc.Bundles}
		}
	}
	t.Fatalf("no SVID %s from %s", id, p.dataDir)
	return nil
}

// mtlsClient is an HTTP client presenting src's SVID, trusting servers of
// example.org.
func mtlsClient(src *fixedX509Source) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: authz.ClientTLSConfig(src, authz.TrustDomain(spiffeid.RequireTrustDomainFromString("example.org"))),
	}}
}

// accessToken asks the token endpoint for a client_credentials token
// over mTLS with the client's SVID.
func accessToken(t *testing.T, c *http.Client, tokenURL, audience, scope string) (token, jti string) {
	t.Helper()
	form := url.Values{"grant_type": {"client_credentials"}, "audience": {audience}, "scope": {scope}}
	resp, err := c.PostForm(tokenURL, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var tr struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &tr) != nil || tr.AccessToken == "" || !strings.EqualFold(tr.TokenType, "bearer") {
		t.Fatalf("token endpoint: %d %s", resp.StatusCode, body)
	}
	parts := strings.Split(tr.AccessToken, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims struct {
		JTI string         `json:"jti"`
		Cnf map[string]any `json:"cnf"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.JTI == "" || claims.Cnf["x5t#S256"] == nil {
		t.Fatalf("claims %s: %v", payload, err)
	}
	return tr.AccessToken, claims.JTI
}

// TestIntegrationOAuthResourceServer: a client on host 1 gets access
// tokens from the server's token endpoint with its X.509-SVID and calls
// a resource server on host 2 that validates them locally with
// workloadapi/authz, fed by host 2's agent: a valid token is served, a
// missing scope is 403, a token presented with another SVID than the one
// it is bound to is 401, and a revoked token (by jti, then by client) is
// refused within a second of `writ oauth revoke` returning; host 2's
// agent then refuses the revoked client's earlier JWT-SVID too.
func TestIntegrationOAuthResourceServer(t *testing.T) {
	e := newNodeEnv(t, "--oauth-bind-address", "127.0.0.1:0")
	oauthAddr := e.server.oauthAddress()
	issuer := "https://" + oauthAddr
	host1 := startAgent(t, e.addr, filepath.Join(e.dir, "h1"), e.bundle, e.token("spiffe://example.org/writ/agent/host1"))
	host2 := startAgent(t, e.addr, filepath.Join(e.dir, "h2"), e.bundle, e.token("spiffe://example.org/writ/agent/host2"))
	const (
		clientID = "spiffe://example.org/client"
		mallory  = "spiffe://example.org/mallory"
		orders   = "spiffe://example.org/orders"
		audience = "https://orders.example.org"
	)
	e.entry(clientID, "spiffe://example.org/writ/agent/host1")
	e.entry(mallory, "spiffe://example.org/writ/agent/host1")
	e.entry(orders, "spiffe://example.org/writ/agent/host2")
	e.server.admin("oauth", "client", "create", "--spiffe-id", clientID, "--audience", audience, "--scope", "orders:read", "--scope", "orders:write")
	waitSVIDs(t, host1, []string{clientID, mallory})
	waitSVIDs(t, host2, []string{orders})

	// The resource server, on host 2: its SVID and the JWT bundle from
	// host 2's agent, and the revocation list it pushes.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rsSVID, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(socketAddr(host2)))
	if err != nil {
		t.Fatal(err)
	}
	defer rsSVID.Close()
	bundles, err := workloadapi.NewBundleSource(ctx, workloadapi.WithClientOptions(socketAddr(host2)))
	if err != nil {
		t.Fatal(err)
	}
	defer bundles.Close()
	revoked, err := revocationapi.NewClient(revocationapi.ClientConfig{Address: "unix://" + host2.socket})
	if err != nil {
		t.Fatal(err)
	}
	revDone := make(chan error, 1)
	go func() { revDone <- revoked.Run(ctx) }()
	defer func() { cancel(); <-revDone }()
	select {
	case <-revoked.Ready():
	case <-time.After(20 * time.Second):
		t.Fatal("no revocation list from host 2's agent")
	}
	td := spiffeid.RequireTrustDomainFromString("example.org")
	az, err := authz.NewAccessTokenAuthorizer(authz.AccessTokenConfig{
		TrustDomain: td, Bundles: bundles, Audience: []string{audience}, Issuer: issuer, Scopes: []string{"orders:read"}, Revocations: revoked,
	})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", authz.ServerTLSConfig(rsSVID, authz.TrustDomain(td)))
	if err != nil {
		t.Fatal(err)
	}
	rs := &http.Server{Handler: az.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, _ := authz.AccessTokenFrom(r.Context())
		fmt.Fprintf(w, "orders for %s", tok.ClientID)
	}))}
	go rs.Serve(lis)
	defer rs.Close()
	rsURL := "https://" + lis.Addr().(*net.TCPAddr).String() + "/orders"

	// The client, on host 1.
	client := mtlsClient(svidSource(t, host1, clientID))
	other := mtlsClient(svidSource(t, host1, mallory))
	tokenURL := issuer + "/token"
	call := func(c *http.Client, token string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, rsURL, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("WWW-Authenticate") + " " + strings.TrimSpace(string(body))
	}
	tok, jti := accessToken(t, client, tokenURL, audience, "orders:read orders:write")
	if code, body := call(client, tok); code != http.StatusOK || body != " orders for "+clientID {
		t.Fatalf("valid token: %d %q", code, body)
	}
	writeOnly, _ := accessToken(t, client, tokenURL, audience, "orders:write")
	if code, body := call(client, writeOnly); code != http.StatusForbidden || !strings.Contains(body, `error="insufficient_scope"`) {
		t.Errorf("missing scope: %d %q", code, body)
	}
	if code, body := call(other, tok); code != http.StatusUnauthorized || !strings.Contains(body, `error="invalid_token"`) {
		t.Errorf("token presented with another SVID: %d %q", code, body)
	}

	// Revocation by jti, then by client, each in force on host 2 within
	// a second of the command returning. A client revocation also
	// covers the client's JWT-SVIDs issued before it: host 2's agent
	// refuses them in ValidateJWTSVID.
	second, _ := accessToken(t, client, tokenURL, audience, "orders:read")
	jwtCtx, jwtCancel := context.WithTimeout(ctx, 20*time.Second)
	defer jwtCancel()
	svid, err := workloadapi.FetchJWTSVID(jwtCtx, jwtsvid.Params{Audience: "orders", Subject: spiffeid.RequireFromString(clientID)}, socketAddr(host1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := workloadapi.ValidateJWTSVID(jwtCtx, svid.Marshal(), "orders", socketAddr(host2)); err != nil {
		t.Fatalf("ValidateJWTSVID before the revocation: %v", err)
	}
	for _, c := range []struct {
		what  string
		args  []string
		token string
	}{
		{"jti", []string{"--jti", jti}, tok},
		{"client", []string{"--client-id", clientID}, second},
	} {
		if code, _ := call(client, c.token); code != http.StatusOK {
			t.Fatalf("before revocation by %s: %d", c.what, code)
		}
		sub := revoked.List().Subscribe()
		e.server.admin(append([]string{"oauth", "revoke"}, c.args...)...)
		start := time.Now()
		deadline := time.After(time.Second)
		for {
			if code, _ := call(client, c.token); code == http.StatusUnauthorized {
				break
			}
			select {
			case <-sub.C():
			case <-deadline:
				t.Fatalf("revocation by %s not in force on host 2 after 1 s", c.what)
			}
		}
		sub.Close()
		t.Logf("revocation by %s in force on host 2 after %s", c.what, time.Since(start).Round(time.Millisecond))
	}
	// The resource server's list came from host 2's agent, which has it.
	if _, err := workloadapi.ValidateJWTSVID(jwtCtx, svid.Marshal(), "orders", socketAddr(host2)); status.Code(err) != codes.InvalidArgument {
		t.Errorf("ValidateJWTSVID of a JWT-SVID of the revoked client: %v", err)
	}
}
