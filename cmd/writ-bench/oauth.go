package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"writ.dev/writ/agent/revocation"
	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/workloadapi/authz"
	"writ.dev/writ/workloadapi/revocationapi"
)

// OAuth access-token figures (issue 15): local validation by the
// workloadapi/authz middleware against a raw ES256 verification.
const (
	figATCached    = "oauth.validate.cached.per_core"
	figATFull      = "oauth.validate.full.per_core"
	figATFullRatio = "oauth.validate.full.ratio_to_verify"
	figATVerify    = "oauth.validate.es256_verify.per_core"

	// atRevocations is the size of the revocation list the validations
	// are checked against.
	atRevocations = 1000
)

func oauthFigures(cfg Config) []*Figure {
	tok := fmt.Sprintf("an RFC 9068 access token (ES256, certificate-bound, 2 scopes) through authz.AccessTokenAuthorizer.Authenticate with a %s-entry revocation list", count(atRevocations))
	return append([]*Figure{
		{Name: figATCached, Unit: unitOpsPerSec, Description: "validations per second of " + tok + ", the token remembered (the clients' common case), one goroutine: per core"},
		{Name: figATFull, Unit: unitOpsPerSec, Description: "validations per second of " + tok + ", the token cache disabled (every call a full parse and ES256 verification), one goroutine: per core"},
		{Name: figATVerify, Unit: unitOpsPerSec, Description: "raw ES256 verifications per second of the same token's signing input (SHA-256 and crypto/ecdsa.VerifyASN1), one goroutine, measured interleaved with the two above"},
		{Name: figATFullRatio, Unit: unitRatio, Description: "oauth.validate.full.per_core / oauth.validate.es256_verify.per_core: the middleware's full validation against the bare signature check"},
	}, oauthServerFigures(cfg)...)
}

// measureOAuthValidation measures the middleware in process, interleaved
// with a raw ES256 verification of the same token's signing input.
func (b *bench) measureOAuthValidation(ctx context.Context) error {
	b.prog.phase("OAuth access tokens: local validation in workloadapi/authz")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	bundle := jwtbundle.New(benchTD)
	if err := bundle.AddJWTAuthority("k1", key.Public()); err != nil {
		return err
	}
	iss, err := newIssuer(time.Now())
	if err != nil {
		return err
	}
	peer := iss.Cert // any certificate: the token is bound to it
	now := time.Now()
	revs := revocation.New(nil)
	var rs []revocation.Revocation
	for i := range atRevocations {
		rs = append(rs, revocation.Revocation{JTI: fmt.Sprintf("revoked-%d", i), RevokedAt: now, ExpiresAt: now.Add(time.Hour)})
	}
	revs.Add(rs)
	token, signed, sig, err := benchAccessToken(key, peer, now)
	if err != nil {
		return err
	}
	newAuthz := func(cache int) (*authz.AccessTokenAuthorizer, error) {
		return authz.NewAccessTokenAuthorizer(authz.AccessTokenConfig{
			TrustDomain: benchTD, Bundles: bundle, Audience: []string{"https://orders.bench.test"}, Scopes: []string{"orders:read"},
			Revocations: revs, TokenCacheSize: cache,
		})
	}
	cached, err := newAuthz(0)
	if err != nil {
		return err
	}
	full, err := newAuthz(-1)
	if err != nil {
		return err
	}
	header := "Bearer " + token
	validate := func(a *authz.AccessTokenAuthorizer) func() error {
		return func() error {
			_, err := a.Authenticate(header, peer)
			return err
		}
	}
	digest := sha256.Sum256([]byte(signed))
	verify := &timedOp{name: "ES256 verify", op: func() error {
		if !ecdsa.VerifyASN1(&key.PublicKey, digest[:], sig) {
			return errors.New("signature does not verify")
		}
		return nil
	}}
	c := &timedOp{name: "cached validation", op: validate(cached)}
	f := &timedOp{name: "full validation", op: validate(full)}
	if err := measureInterleaved(ctx, b.cfg.LimitDur, 4, c, f, verify); err != nil {
		return err
	}
	b.set(figATCached, c.rate(), c.ops, nil)
	b.set(figATFull, f.rate(), f.ops, nil)
	b.set(figATVerify, verify.rate(), verify.ops, nil)
	b.set(figATFullRatio, f.rate()/verify.rate(), 0, nil)
	b.prog.printf("access tokens: %s/s remembered, %s/s in full, ES256 verify %s/s (one goroutine)", num(c.rate()), num(f.rate()), num(verify.rate()))
	return nil
}

// benchAccessToken signs an access token bound to peer, and returns it
// with its signing input and its signature in ASN.1 form (for the raw
// verification).
func benchAccessToken(key *ecdsa.PrivateKey, peer *x509.Certificate, now time.Time) (token, signed string, asn1Sig []byte, err error) {
	enc := func(v any) string {
		j, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(j)
	}
	thumb := sha256.Sum256(peer.Raw)
	signed = enc(map[string]any{"alg": "ES256", "kid": "k1", "typ": "at+jwt"}) + "." + enc(map[string]any{
		"iss": "https://auth.bench.test", "sub": "spiffe://bench.test/web", "client_id": "spiffe://bench.test/web",
		"aud": "https://orders.bench.test", "scope": "orders:read orders:write", "jti": "bench-token",
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		"cnf": map[string]any{"x5t#S256": base64.RawURLEncoding.EncodeToString(thumb[:])},
	})
	digest := sha256.Sum256([]byte(signed))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		return "", "", nil, err
	}
	raw := make([]byte, 64)
	r.FillBytes(raw[:32])
	s.FillBytes(raw[32:])
	asn1Sig, err = ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		return "", "", nil, err
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(raw), signed, asn1Sig, nil
}

// renderOAuth writes the report's section on the OAuth figures.
func renderOAuth(w *mdWriter, r *Results) {
	w.p("## OAuth access tokens")
	w.p("")
	w.p("Resource servers validate access tokens in process (workloadapi/authz); no validation reaches the authorization server.")
	w.p("")
	var rows [][]string
	for _, f := range r.Figures {
		if strings.HasPrefix(f.Name, "oauth.") {
			rows = append(rows, []string{f.Name, cell(r, f.Name), refCell(f), metCell(f), f.Description})
		}
	}
	w.table([]string{"Figure", "Value", "Reference", "Target", "What"}, rows)
}

// OAuth figures measured on real processes: one server with its OAuth
// endpoint and two agents ("hosts").
const (
	figRevokeP50 = "oauth.revocation.p50"
	figRevokeP99 = "oauth.revocation.p99"
	figRevokeMax = "oauth.revocation.max"
	figIssueRate = "oauth.issue.rate"
	figIssueP50  = "oauth.issue.p50"
	figIssueP99  = "oauth.issue.p99"

	// oauthAgentB is the second agent of the OAuth figures.
	oauthAgentB = "spiffe://bench.test/writ/agent/oauth-b"
	// oauthClientPath is the path of the benchmark's OAuth client.
	oauthClientPath = "/bench/oauth/client"
	// oauthAudience is the audience of the tokens issued.
	oauthAudience = "https://orders.bench.test"
	// issueConns is the number of connections the issuance rate uses.
	issueConns = 16
)

// oauthCounts sizes the OAuth figures of real processes.
type oauthCounts struct {
	Revocations int
	IssueDur    time.Duration
}

func oauthConfig(cfg Config) oauthCounts {
	if cfg.Smoke {
		return oauthCounts{Revocations: 10, IssueDur: 500 * time.Millisecond}
	}
	return oauthCounts{Revocations: 200, IssueDur: 10 * time.Second}
}

func oauthServerFigures(cfg Config) []*Figure {
	oc := oauthConfig(cfg)
	rev := fmt.Sprintf("from the admin API's RevokeOAuthTokens (by jti) returning to a RevocationService watcher (revocationapi.Client) on the other agent's socket holding the revocation (0 if it came first), %s revocations", count(oc.Revocations))
	issue := fmt.Sprintf("access tokens issued per second by one server's token endpoint: grant_type=client_credentials, the client authenticated by its X.509-SVID over mTLS, %d keep-alive connections with TLS session resumption", issueConns)
	return []*Figure{
		{Name: figRevokeP50, Unit: unitMS, Description: "revocation to effect on another host: " + rev + ": median"},
		{Name: figRevokeP99, Unit: unitMS, Description: "the same: 99th percentile", Target: below(1000, "< 1 s")},
		{Name: figRevokeMax, Unit: unitMS, Description: "the same: maximum"},
		{Name: figIssueRate, Unit: "tokens/s", Description: issue, Reference: &Reference{Value: 5000, Of: "seeds", Note: "an authorization server instance at about 5,000 QPS"}},
		{Name: figIssueP50, Unit: unitMS, Description: "the same calls: median latency"},
		{Name: figIssueP99, Unit: unitMS, Description: "the same calls: 99th percentile latency"},
	}
}

// oauthEnv is a server with its OAuth endpoint and two agents.
type oauthEnv struct {
	w            *writEnv
	agentB       *writProc
	wlB          string
	oauthAddress string
}

func (e *oauthEnv) close() {
	if e.agentB != nil {
		e.agentB.stop()
	}
	e.w.close()
}

// startOAuthEnv starts the server (with --oauth-bind-address) and the
// two agents.
func (b *bench) startOAuthEnv(ctx context.Context, bin string) (*oauthEnv, error) {
	dir := filepath.Join(b.tmp, "O")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, err
	}
	w := &writEnv{wlSock: filepath.Join(dir, "wl.sock"), uid: os.Getuid(), adminSock: filepath.Join(dir, "s", "admin.sock")}
	server, addr, err := b.startServer(ctx, bin, "O-server", filepath.Join(dir, "s"), "--oauth-bind-address", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	w.server = server
	e := &oauthEnv{w: w, oauthAddress: server.logs.oauthAddress()}
	if e.oauthAddress == "" {
		server.stop()
		return nil, errors.New("the server logged no OAuth endpoint address")
	}
	bundle, err := b.runWrit(ctx, bin, "bundle", "show", "--admin-socket", w.adminSock)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "bundle.pem"), []byte(bundle), 0o600)
	}
	if err != nil {
		server.stop()
		return nil, err
	}
	start := func(name, id, agentDir, sock string) (*writProc, error) {
		token, err := b.runWrit(ctx, bin, "token", "generate", "--spiffe-id", id, "--admin-socket", w.adminSock)
		if err != nil {
			return nil, err
		}
		p, err := b.startWrit(bin, name, []string{"WRIT_JOIN_TOKEN=" + strings.TrimSpace(token)},
			"agent", "run", "--server-address", addr, "--trust-domain", benchTD.Name(),
			"--data-dir", agentDir, "--socket-path", sock, "--trust-bundle", filepath.Join(dir, "bundle.pem"),
			"--log-format", "json", "--log-level", "info")
		if err != nil {
			return nil, err
		}
		return p, b.waitHealthy(ctx, p, "agent", "healthcheck", "--data-dir", agentDir, "--timeout", "1s")
	}
	// On failure, stop what was started (stopAll would at the end).
	fail := func(err error, ps ...*writProc) (*oauthEnv, error) {
		for _, p := range ps {
			if p != nil {
				p.stop()
			}
		}
		return nil, err
	}
	if w.agent, err = start("O-agent", agentID, filepath.Join(dir, "a"), w.wlSock); err != nil {
		return fail(err, w.agent, server)
	}
	e.wlB = filepath.Join(dir, "wl2.sock")
	if e.agentB, err = start("O-agent-b", oauthAgentB, filepath.Join(dir, "b"), e.wlB); err != nil {
		return fail(err, e.agentB, w.agent, server)
	}
	if w.conn, err = grpc.NewClient("unix:"+w.adminSock, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		return fail(err, e.agentB, w.agent, server)
	}
	w.entries = adminv1.NewEntryServiceClient(w.conn)
	return e, nil
}

// measureOAuthServer measures revocation propagation and token issuance
// on a new server with two agents.
func (b *bench) measureOAuthServer(ctx context.Context, bin string) {
	oc := oauthConfig(b.cfg)
	b.prog.phase(fmt.Sprintf("OAuth: %s revocations to another host's agent, token issuance over mTLS", count(oc.Revocations)))
	e, err := b.startOAuthEnv(ctx, bin)
	if err != nil {
		b.fail(err, "oauth.revocation.", "oauth.issue.")
		return
	}
	defer e.close()
	if err := b.measureRevocations(ctx, e, oc.Revocations); err != nil {
		b.fail(err, "oauth.revocation.")
	}
	if err := b.measureIssuance(ctx, e, oc.IssueDur); err != nil {
		b.fail(err, "oauth.issue.")
	}
}

// measureRevocations revokes tokens by jti one at a time through the
// admin API and times each until a watcher of agent B has it.
func (b *bench) measureRevocations(ctx context.Context, e *oauthEnv, n int) error {
	if err := waitFor(ctx, socketWait, "agent B's Workload API socket", func() (bool, error) { return isSocket(e.wlB), nil }, e.w.server, e.agentB); err != nil {
		return err
	}
	c, err := revocationapi.NewClient(revocationapi.ClientConfig{Address: "unix://" + e.wlB})
	if err != nil {
		return err
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(cctx) }()
	defer func() { cancel(); <-done }()
	if _, err := waitAt(ctx, readyAt(c.Ready()), b.cfg.Timeout); err != nil {
		return fmt.Errorf("the revocation list of agent B: %w", err)
	}
	sub := c.List().Subscribe()
	defer sub.Close()
	api := adminv1.NewOAuthServiceClient(e.w.conn)
	var lat []time.Duration
	early := 0
	for i := range n {
		jti := fmt.Sprintf("bench-revoked-%d", i)
		if _, err := api.RevokeOAuthTokens(ctx, &adminv1.RevokeOAuthTokensRequest{Jti: jti}); err != nil {
			return fmt.Errorf("RevokeOAuthTokens: %w", err)
		}
		returned := time.Now()
		deadline := time.NewTimer(b.cfg.Timeout)
		var seen time.Time
		for seen.IsZero() {
			if c.Revoked(jti, "", "", time.Time{}) {
				seen = time.Now()
				break
			}
			select {
			case <-sub.C():
			case <-deadline.C:
				return fmt.Errorf("revocation %d not on agent B after %s", i+1, b.cfg.Timeout)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		deadline.Stop()
		if seen.Before(returned) {
			early++
		}
		lat = append(lat, max(0, seen.Sub(returned)))
	}
	sum, err := durationsMS(lat).Summarize()
	if err != nil {
		return err
	}
	params := map[string]int{"seen_before_return": early}
	b.set(figRevokeP50, sum.P50, sum.N, params)
	b.set(figRevokeP99, sum.P99, sum.N, params)
	b.set(figRevokeMax, sum.Max, sum.N, params)
	b.prog.printf("revocation -> other host's agent: p50 %s ms, p99 %s ms, max %s ms (%d samples)", msNum(sum.P50), msNum(sum.P99), msNum(sum.Max), sum.N)
	return nil
}

// readyAt turns a ready channel into one that receives the time.
func readyAt(ready <-chan struct{}) <-chan time.Time {
	ch := make(chan time.Time, 1)
	go func() {
		<-ready
		ch <- time.Now()
	}()
	return ch
}

// measureIssuance registers an OAuth client for this process's SVID on
// agent A and asks the token endpoint for client_credentials tokens from
// issueConns connections for d.
func (b *bench) measureIssuance(ctx context.Context, e *oauthEnv, d time.Duration) error {
	clientID := "spiffe://" + benchTD.Name() + oauthClientPath
	if _, _, err := e.w.create(ctx, []*adminv1.Entry{e.w.workloadEntry(oauthClientPath)}, 1); err != nil {
		return err
	}
	api := adminv1.NewOAuthServiceClient(e.w.conn)
	if _, err := api.CreateOAuthClient(ctx, &adminv1.OAuthClient{SpiffeId: clientID, Audiences: []string{oauthAudience}, Scopes: []string{"orders:read"}}); err != nil {
		return fmt.Errorf("CreateOAuthClient: %w", err)
	}
	if err := waitFor(ctx, socketWait, "agent A's Workload API socket", func() (bool, error) { return isSocket(e.w.wlSock), nil }, e.w.server, e.w.agent); err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	src, err := spiffewl.NewX509Source(sctx, spiffewl.WithClientOptions(spiffewl.WithAddr("unix://"+e.w.wlSock)))
	if err != nil {
		return fmt.Errorf("the client's X.509-SVID: %w", err)
	}
	defer src.Close()
	if err := waitFor(ctx, b.cfg.Timeout, "the OAuth client's X.509-SVID", func() (bool, error) {
		s, err := src.GetX509SVID()
		return err == nil && s.ID.String() == clientID, nil
	}, e.w.server, e.w.agent); err != nil {
		return err
	}
	tlsConf := authz.ClientTLSConfig(src, authz.TrustDomain(benchTD))
	tlsConf.ClientSessionCache = tls.NewLRUClientSessionCache(issueConns)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: tlsConf, MaxIdleConnsPerHost: issueConns, MaxConnsPerHost: issueConns,
	}}
	defer client.CloseIdleConnections()
	tokenURL := "https://" + e.oauthAddress + "/token"
	form := url.Values{"grant_type": {"client_credentials"}, "audience": {oauthAudience}}.Encode()
	issue := func() error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, tokenURL, strings.NewReader(form))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"access_token"`)) {
			return fmt.Errorf("token endpoint: %d %s", resp.StatusCode, firstLine(string(body)))
		}
		return nil
	}
	if err := issue(); err != nil { // warm up, and check
		return err
	}
	var (
		mu       sync.Mutex // guards lat, firstErr
		lat      []time.Duration
		firstErr error
		wg       sync.WaitGroup
	)
	start := time.Now()
	end := start.Add(d)
	for range issueConns {
		wg.Go(func() {
			var mine []time.Duration
			for time.Now().Before(end) && ctx.Err() == nil {
				t0 := time.Now()
				if err := issue(); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return firstErr
	}
	sum, err := durationsMS(lat).Summarize()
	if err != nil {
		return err
	}
	rate := float64(sum.N) / elapsed.Seconds()
	params := map[string]int{"connections": issueConns}
	b.set(figIssueRate, rate, sum.N, params)
	b.set(figIssueP50, sum.P50, sum.N, params)
	b.set(figIssueP99, sum.P99, sum.N, params)
	b.prog.printf("token issuance: %s tokens/s, p50 %s ms, p99 %s ms (%d connections)", num(rate), msNum(sum.P50), msNum(sum.P99), issueConns)
	return nil
}
