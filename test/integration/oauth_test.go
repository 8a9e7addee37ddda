package integration_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	writjwt "writ.dev/writ/ca/jwtsvid"
)

// oauthPost posts form to u with hc and decodes the JSON answer.
func oauthPost(t *testing.T, hc *http.Client, u string, form url.Values) (int, map[string]any) {
	t.Helper()
	resp, err := hc.PostForm(u, form)
	if err != nil {
		t.Fatalf("POST %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("POST %s: Cache-Control %q, want no-store", u, cc)
	}
	var out map[string]any
	if len(body) > 0 {
		if err := json.Unmarshal(body, &out); err != nil {
			t.Fatalf("POST %s: status %d, body %q: %v", u, resp.StatusCode, body, err)
		}
	}
	return resp.StatusCode, out
}

// tokenClaims returns the claims of an access token, validated against
// the bundle as a resource server would (typ at+jwt, signature, exp).
func tokenClaims(t *testing.T, token string, bundle *jwtBundleSource, aud string) map[string]any {
	t.Helper()
	c, err := writjwt.ValidateAccessToken(token, bundle.set, []string{aud}, time.Now())
	if err != nil {
		t.Fatalf("access token does not validate for audience %q: %v", aud, err)
	}
	return c.Raw
}

type jwtBundleSource struct{ set writjwt.BundleSource }

// TestIntegrationOAuth: workloads get OAuth access tokens from a real
// server with nothing but the SVIDs a real agent gave them, with both
// client authentication methods and with x/oauth2 unmodified; a service
// exchanges a caller's token for a downstream one whose act names it; a
// revoked token introspects inactive.
func TestIntegrationOAuth(t *testing.T) {
	oauthAddr := freePort(t)
	e := newNodeEnv(t, "--oauth-bind-address", oauthAddr, "--oauth-token-ttl", "2m")
	agentID := "spiffe://example.org/writ/agent/a"
	a := startAgent(t, e.addr, filepath.Join(e.dir, "a"), e.bundle, e.token(agentID))
	const clientID, middleID = "spiffe://example.org/client", "spiffe://example.org/middle"
	e.entry(clientID, agentID)
	e.entry(middleID, agentID)
	waitSVIDs(t, a, []string{clientID, middleID})
	e.server.admin("oauth", "client", "create", "--spiffe-id", clientID, "--audience", "orders", "--audience", middleID, "--scope", "orders:read", "--scope", "orders:write")
	e.server.admin("oauth", "client", "create", "--spiffe-id", middleID, "--audience", "inventory", "--scope", "stock:read")
	var clients []struct {
		SPIFFEID  string   `json:"spiffe_id"`
		Audiences []string `json:"audiences"`
		Scopes    []string `json:"scopes"`
	}
	e.server.adminJSON(&clients, "oauth", "client", "list")
	if len(clients) != 2 || clients[0].SPIFFEID != clientID || strings.Join(clients[0].Audiences, ",") != "orders,"+middleID || strings.Join(clients[1].Scopes, ",") != "stock:read" {
		t.Fatalf("oauth client list: %+v", clients)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	svids, err := workloadapi.FetchX509SVIDs(ctx, socketAddr(a))
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]*x509svid.SVID{}
	for _, s := range svids {
		byID[s.ID.String()] = s
	}
	bundles, err := workloadapi.FetchX509Bundles(ctx, socketAddr(a))
	if err != nil {
		t.Fatal(err)
	}
	jwtBundles, err := workloadapi.FetchJWTBundles(ctx, socketAddr(a))
	if err != nil {
		t.Fatal(err)
	}
	jb := &jwtBundleSource{jwtBundles}
	serverID := tlsconfig.AuthorizeID(spiffeid.RequireFromString("spiffe://example.org/writ/server"))
	mtls := func(id string) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(byID[id], bundles, serverID)}}
	}
	plain := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsconfig.TLSClientConfig(bundles, serverID)}}

	// Discovery.
	base := "https://" + oauthAddr
	resp, err := plain.Get(base + "/.well-known/oauth-authorization-server")
	if err != nil {
		t.Fatal(err)
	}
	var meta map[string]any
	err = json.NewDecoder(resp.Body).Decode(&meta)
	resp.Body.Close()
	if err != nil || meta["issuer"] != base || meta["token_endpoint"] != base+"/token" || meta["introspection_endpoint"] != base+"/introspect" || meta["revocation_endpoint"] != base+"/revoke" {
		t.Fatalf("metadata %v: %v", meta, err)
	}
	tokenURL := meta["token_endpoint"].(string)

	// 1. x/oauth2's client credentials flow, unmodified, over mTLS with
	// the client's X.509-SVID: a certificate-bound token.
	cc := clientcredentials.Config{ClientID: clientID, TokenURL: tokenURL, Scopes: []string{"orders:read"},
		EndpointParams: url.Values{"audience": {"orders"}}}
	tok, err := cc.Token(context.WithValue(ctx, oauth2.HTTPClient, mtls(clientID)))
	if err != nil {
		t.Fatalf("x/oauth2 client credentials: %v", err)
	}
	if tok.TokenType != "Bearer" || tok.Expiry.IsZero() || time.Until(tok.Expiry) > 2*time.Minute+5*time.Second {
		t.Errorf("token type %q expiry %s", tok.TokenType, tok.Expiry)
	}
	claims := tokenClaims(t, tok.AccessToken, jb, "orders")
	leaf := sha256.Sum256(byID[clientID].Certificates[0].Raw)
	cnf, _ := claims["cnf"].(map[string]any)
	if claims["sub"] != clientID || claims["client_id"] != clientID || claims["scope"] != "orders:read" || claims["iss"] != base ||
		claims["jti"] == "" || cnf["x5t#S256"] != base64.RawURLEncoding.EncodeToString(leaf[:]) {
		t.Fatalf("mTLS token claims %v", claims)
	}

	// 2. A JWT-SVID client assertion for the token endpoint, over TLS
	// without a client certificate: no cnf. It is accepted once.
	assertion, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: tokenURL, Subject: spiffeid.RequireFromString(clientID)}, socketAddr(a))
	if err != nil {
		t.Fatal(err)
	}
	form := url.Values{"grant_type": {"client_credentials"}, "audience": {middleID},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {assertion.Marshal()}}
	code, body := oauthPost(t, plain, tokenURL, form)
	if code != http.StatusOK {
		t.Fatalf("client assertion: %d %v", code, body)
	}
	forMiddle := body["access_token"].(string)
	claims = tokenClaims(t, forMiddle, jb, middleID)
	if claims["sub"] != clientID || claims["scope"] != "orders:read orders:write" || claims["cnf"] != nil {
		t.Fatalf("assertion token claims %v", claims)
	}
	if code, body := oauthPost(t, plain, tokenURL, form); code != http.StatusBadRequest || body["error"] != "invalid_client" {
		t.Fatalf("replayed assertion: %d %v", code, body)
	}

	// 3. Token exchange: middle, holding the client's token for it,
	// gets one for inventory on the client's behalf.
	code, body = oauthPost(t, mtls(middleID), tokenURL, url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"subject_token": {forMiddle}, "subject_token_type": {"urn:ietf:params:oauth:token-type:access_token"}, "resource": {"inventory"}})
	if code != http.StatusBadRequest || body["error"] != "invalid_target" {
		t.Fatalf("exchange for a resource that is not an absolute URI: %d %v", code, body)
	}
	code, body = oauthPost(t, mtls(middleID), tokenURL, url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"subject_token": {forMiddle}, "subject_token_type": {"urn:ietf:params:oauth:token-type:access_token"}, "audience": {"inventory"}})
	if code != http.StatusOK || body["issued_token_type"] != "urn:ietf:params:oauth:token-type:access_token" {
		t.Fatalf("token exchange: %d %v", code, body)
	}
	exchanged := body["access_token"].(string)
	claims = tokenClaims(t, exchanged, jb, "inventory")
	act, _ := claims["act"].(map[string]any)
	// The subject token holds orders:read and orders:write, middle is
	// granted stock:read: exchange never widens a token, so no scope.
	if claims["sub"] != clientID || claims["client_id"] != middleID || claims["scope"] != nil || act["sub"] != middleID || act["act"] != nil {
		t.Fatalf("exchanged token claims %v", claims)
	}
	// The client itself cannot exchange the token: it was not issued to
	// it.
	if code, body := oauthPost(t, mtls(clientID), tokenURL, url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"subject_token": {forMiddle}, "subject_token_type": {"urn:ietf:params:oauth:token-type:access_token"}, "audience": {"orders"}}); code != http.StatusBadRequest || body["error"] != "invalid_request" {
		t.Fatalf("exchange by a party the token was not issued to: %d %v", code, body)
	}

	// 4. Introspection, then revocation by the client the token was
	// issued to, then introspection again.
	introspect := func(token string) map[string]any {
		t.Helper()
		code, body := oauthPost(t, mtls(middleID), base+"/introspect", url.Values{"token": {token}})
		if code != http.StatusOK {
			t.Fatalf("introspect: %d %v", code, body)
		}
		return body
	}
	if got := introspect(tok.AccessToken); got["active"] != true || got["sub"] != clientID || got["aud"] != "orders" || got["scope"] != "orders:read" {
		t.Fatalf("introspection of a live token: %v", got)
	}
	if code, body := oauthPost(t, mtls(middleID), base+"/revoke", url.Values{"token": {tok.AccessToken}}); code != http.StatusBadRequest || body["error"] != "unauthorized_client" {
		t.Fatalf("revocation by another client: %d %v", code, body)
	}
	if code, _ := oauthPost(t, mtls(clientID), base+"/revoke", url.Values{"token": {tok.AccessToken}, "token_type_hint": {"access_token"}}); code != http.StatusOK {
		t.Fatalf("revocation: %d", code)
	}
	if got := introspect(tok.AccessToken); len(got) != 1 || got["active"] != false {
		t.Fatalf("introspection of a revoked token: %v", got)
	}
	if got := introspect(forMiddle); got["active"] != true {
		t.Fatalf("introspection of another token of the client after revoking one: %v", got)
	}

	// 5. An operator revokes every token of the client: the server
	// refuses them once the store has signalled the change.
	out := e.server.admin("oauth", "revoke", "--client-id", clientID)
	if !strings.Contains(out, "revoked every access token issued to "+clientID) {
		t.Fatalf("writ oauth revoke: %q", out)
	}
	deadline := time.Now().Add(5 * time.Second)
	for introspect(forMiddle)["active"] != false {
		if time.Now().After(deadline) {
			t.Fatal("a token of a revoked client still introspects active")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The exchanged token was issued to middle, but its sub is the
	// client: it is revoked too.
	if got := introspect(exchanged); got["active"] != false {
		t.Fatalf("introspection of a token about a revoked client: %v", got)
	}
	// The client's credentials issued until then authenticate nothing,
	// with either method: its X.509-SVID, and a JWT-SVID fetched now (the
	// revocation is stamped 30 s ahead, for clock skew between servers).
	// Credentials issued later are valid: ca/oauth's
	// TestClientRevocationCoversEveryMethod.
	if _, err := cc.Token(context.WithValue(ctx, oauth2.HTTPClient, mtls(clientID))); err == nil {
		t.Fatal("a revoked client got a token over mTLS with its earlier X.509-SVID")
	}
	again, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: tokenURL, Subject: spiffeid.RequireFromString(clientID)}, socketAddr(a))
	if err != nil {
		t.Fatal(err)
	}
	if code, body := oauthPost(t, plain, tokenURL, url.Values{"grant_type": {"client_credentials"}, "audience": {"orders"},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {again.Marshal()}}); code != http.StatusBadRequest || body["error"] != "invalid_client" {
		t.Fatalf("a revoked client's client assertion: %d %v", code, body["error"])
	}

	// The registration decides: updated, a scope follows; deleted, no
	// token.
	var shown struct {
		Scopes []string `json:"scopes"`
	}
	e.server.admin("oauth", "client", "update", "--spiffe-id", middleID, "--audience", "inventory", "--scope", "stock:write", "--scope", "stock:read")
	e.server.adminJSON(&shown, "oauth", "client", "show", "--spiffe-id", middleID)
	if strings.Join(shown.Scopes, " ") != "stock:read stock:write" {
		t.Fatalf("oauth client show after update: %+v", shown)
	}
	mcc := clientcredentials.Config{ClientID: middleID, TokenURL: tokenURL, EndpointParams: url.Values{"audience": {"inventory"}}}
	deadline = time.Now().Add(5 * time.Second)
	for {
		mt, err := mcc.Token(context.WithValue(ctx, oauth2.HTTPClient, mtls(middleID)))
		if err == nil && mt.Extra("scope") == "stock:read stock:write" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("token after the update: %v %v", mt, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if out := e.server.admin("oauth", "client", "delete", "--spiffe-id", middleID); !strings.Contains(out, "deleted") {
		t.Fatalf("oauth client delete: %q", out)
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		code, body := oauthPost(t, mtls(middleID), tokenURL, url.Values{"grant_type": {"client_credentials"}, "audience": {"inventory"}})
		if code == http.StatusBadRequest && body["error"] == "invalid_client" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("token after the client was deleted: %d %v", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
