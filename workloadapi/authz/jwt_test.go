package authz_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/jwtsvid"
	"writ.dev/writ/workloadapi/authz"
)

const audience = "spiffe://example.org/greeter"

// jwtEnv is a JWTAuthorizer of td's bundle that allows /web and /ns/prod/...
type jwtEnv struct {
	local, other *pki
	bundles      *jwtbundle.Set
	clock        *fakeclock.Clock
	authz        *authz.JWTAuthorizer
}

func newJWTEnv(t *testing.T, cacheSize int) *jwtEnv {
	t.Helper()
	e := &jwtEnv{local: newPKI(t, td), other: newPKI(t, otherTD), clock: fakeclock.New(t0)}
	// The other trust domain's bundle is not trusted.
	e.bundles = jwtbundle.NewSet(e.local.jwtBundle())
	var err error
	e.authz, err = authz.NewJWTAuthorizer(authz.JWTConfig{
		Bundles:        e.bundles,
		Audience:       []string{audience},
		Policy:         authz.Any(authz.IDs(spiffeid.RequireFromPath(td, "/web")), authz.MustPathPrefix(td, "/ns/prod")),
		Clock:          e.clock,
		Logger:         slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		TokenCacheSize: cacheSize,
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// tWriter routes logs to t.Log.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// authCase is a request's Authorization values and the expected outcome.
type authCase struct {
	name      string
	header    func(t *testing.T, e *jwtEnv) []string
	status    int // HTTP
	code      codes.Code
	challenge string // WWW-Authenticate, for 401
	caller    string // for 200
}

func bearer(tok string) []string { return []string{"Bearer " + tok} }

var authCases = []authCase{
	{
		name: "valid",
		header: func(t *testing.T, e *jwtEnv) []string {
			return bearer(e.local.token(t, "/web", []string{audience}, t0, 5*time.Minute))
		},
		status: http.StatusOK, code: codes.OK, caller: "spiffe://example.org/web",
	},
	{
		name: "valid under the path prefix, one of several audiences",
		header: func(t *testing.T, e *jwtEnv) []string {
			return bearer(e.local.token(t, "/ns/prod/api", []string{"other", audience}, t0, time.Minute))
		},
		status: http.StatusOK, code: codes.OK, caller: "spiffe://example.org/ns/prod/api",
	},
	{
		name: "expired",
		header: func(t *testing.T, e *jwtEnv) []string {
			return bearer(e.local.token(t, "/web", []string{audience}, t0.Add(-time.Hour), 5*time.Minute))
		},
		status: http.StatusUnauthorized, code: codes.Unauthenticated,
		challenge: `Bearer error="invalid_token", error_description="token expired"`,
	},
	{
		name: "wrong audience",
		header: func(t *testing.T, e *jwtEnv) []string {
			return bearer(e.local.token(t, "/web", []string{"spiffe://example.org/other"}, t0, time.Minute))
		},
		status: http.StatusUnauthorized, code: codes.Unauthenticated,
		challenge: `Bearer error="invalid_token", error_description="audience mismatch"`,
	},
	{
		name: "wrong trust domain",
		header: func(t *testing.T, e *jwtEnv) []string {
			return bearer(e.other.token(t, "/web", []string{audience}, t0, time.Minute))
		},
		status: http.StatusUnauthorized, code: codes.Unauthenticated,
		challenge: `Bearer error="invalid_token", error_description="invalid token"`,
	},
	{
		name: "other trust domain's subject with our kid",
		header: func(t *testing.T, e *jwtEnv) []string {
			// Signed by the other domain's key under our key's kid: the
			// kid is looked up in the subject's domain only.
			k := e.other.jwtKey
			k.ID = e.local.jwtKey.ID
			tok, _, err := jwtsvid.Sign(t0, k, spiffeid.RequireFromPath(otherTD, "/web"), []string{audience}, time.Minute, t0.Add(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			return bearer(tok)
		},
		status: http.StatusUnauthorized, code: codes.Unauthenticated,
		challenge: `Bearer error="invalid_token", error_description="invalid token"`,
	},
	{
		name: "alg none",
		header: func(t *testing.T, e *jwtEnv) []string {
			h := map[string]any{"alg": "none", "kid": e.local.jwtKey.ID, "typ": "JWT"}
			c := map[string]any{"sub": "spiffe://example.org/web", "aud": audience, "exp": t0.Add(time.Minute).Unix()}
			return bearer(forgeToken(h, c, nil)) // "header.payload." with no signature
		},
		status: http.StatusUnauthorized, code: codes.Unauthenticated,
		challenge: `Bearer error="invalid_token", error_description="invalid token"`,
	},
	{
		name: "HS256 keyed with the public key",
		header: func(t *testing.T, e *jwtEnv) []string {
			h := map[string]any{"alg": "HS256", "kid": e.local.jwtKey.ID, "typ": "JWT"}
			c := map[string]any{"sub": "spiffe://example.org/web", "aud": audience, "exp": t0.Add(time.Minute).Unix()}
			unsigned := strings.TrimSuffix(forgeToken(h, c, nil), ".")
			mac := hmac.New(sha256.New, []byte(fmt.Sprint(e.local.jwtKey.Signer.Public())))
			mac.Write([]byte(unsigned))
			return bearer(unsigned + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil)))
		},
		status: http.StatusUnauthorized, code: codes.Unauthenticated,
		challenge: `Bearer error="invalid_token", error_description="invalid token"`,
	},
	{
		name: "tampered subject",
		header: func(t *testing.T, e *jwtEnv) []string {
			tok := e.local.token(t, "/db", []string{audience}, t0, time.Minute)
			parts := strings.Split(tok, ".")
			parts[1] = base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, `{"aud":%q,"exp":%d,"iat":%d,"sub":"spiffe://example.org/web"}`, audience, t0.Add(time.Minute).Unix(), t0.Unix()))
			return bearer(strings.Join(parts, "."))
		},
		status: http.StatusUnauthorized, code: codes.Unauthenticated,
		challenge: `Bearer error="invalid_token", error_description="invalid token"`,
	},
	{
		name: "tampered signature",
		header: func(t *testing.T, e *jwtEnv) []string {
			tok := e.local.token(t, "/web", []string{audience}, t0, time.Minute)
			i := strings.LastIndexByte(tok, '.') + 5
			c := byte('A')
			if tok[i] == 'A' {
				c = 'B'
			}
			return bearer(tok[:i] + string(c) + tok[i+1:])
		},
		status: http.StatusUnauthorized, code: codes.Unauthenticated,
		challenge: `Bearer error="invalid_token", error_description="invalid token"`,
	},
	{
		name:   "garbage token",
		header: func(*testing.T, *jwtEnv) []string { return bearer("not-a-jwt") },
		status: http.StatusUnauthorized, code: codes.Unauthenticated,
		challenge: `Bearer error="invalid_token", error_description="invalid token"`,
	},
	{
		name:   "missing header",
		header: func(*testing.T, *jwtEnv) []string { return nil },
		status: http.StatusUnauthorized, code: codes.Unauthenticated, challenge: "Bearer",
	},
	{
		name:   "other scheme",
		header: func(*testing.T, *jwtEnv) []string { return []string{"Basic dXNlcjpwYXNz"} },
		status: http.StatusUnauthorized, code: codes.Unauthenticated, challenge: "Bearer",
	},
	{
		name:   "malformed bearer",
		header: func(*testing.T, *jwtEnv) []string { return []string{"Bearer a b"} },
		status: http.StatusUnauthorized, code: codes.Unauthenticated,
		challenge: `Bearer error="invalid_token", error_description="invalid token"`,
	},
	{
		name: "two headers",
		header: func(t *testing.T, e *jwtEnv) []string {
			tok := e.local.token(t, "/web", []string{audience}, t0, time.Minute)
			return []string{"Bearer " + tok, "Bearer " + tok}
		},
		status: http.StatusUnauthorized, code: codes.Unauthenticated,
		challenge: `Bearer error="invalid_token", error_description="invalid token"`,
	},
	{
		name: "valid but not allowed",
		header: func(t *testing.T, e *jwtEnv) []string {
			return bearer(e.local.token(t, "/ns/production", []string{audience}, t0, time.Minute))
		},
		status: http.StatusForbidden, code: codes.PermissionDenied,
	},
}

// echoCaller answers with the caller's SPIFFE ID.
var echoCaller = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	id, ok := authz.CallerID(r.Context())
	if !ok {
		http.Error(w, "no caller", http.StatusInternalServerError)
		return
	}
	fmt.Fprint(w, id)
})

func TestMiddleware(t *testing.T) {
	for _, cacheSize := range []int{0, -1} {
		for _, tt := range authCases {
			t.Run(fmt.Sprintf("%s/cache=%d", tt.name, cacheSize), func(t *testing.T) {
				e := newJWTEnv(t, cacheSize)
				h := e.authz.Middleware(echoCaller)
				values := tt.header(t, e)
				// Twice: the second answer may come from the cache.
				for range 2 {
					req := httptest.NewRequest(http.MethodGet, "/hello", nil)
					for _, v := range values {
						req.Header.Add("Authorization", v)
					}
					rec := httptest.NewRecorder()
					h.ServeHTTP(rec, req)
					if rec.Code != tt.status {
						t.Fatalf("status %d, want %d: %s", rec.Code, tt.status, rec.Body)
					}
					if got := rec.Header().Get("WWW-Authenticate"); got != tt.challenge {
						t.Fatalf("WWW-Authenticate %q, want %q", got, tt.challenge)
					}
					if tt.status == http.StatusOK && rec.Body.String() != tt.caller {
						t.Fatalf("caller %q, want %q", rec.Body, tt.caller)
					}
					if tt.status != http.StatusOK && strings.Contains(rec.Body.String(), "example.org") {
						t.Fatalf("refusal names identities: %q", rec.Body)
					}
				}
			})
		}
	}
}

// TestMiddlewareRechecksCachedTokens: a token validated (and cached) once
// is refused once it expires or once its key leaves the bundle.
func TestMiddlewareRechecksCachedTokens(t *testing.T) {
	e := newJWTEnv(t, 0)
	tok := e.local.token(t, "/web", []string{audience}, t0, time.Minute)
	for range 2 {
		if _, err := e.authz.Authenticate("Bearer " + tok); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.authz.CacheLen(); n != 1 {
		t.Fatalf("%d tokens cached, want 1", n)
	}
	// Refused tokens are never cached.
	if _, err := e.authz.Authenticate("Bearer " + e.local.token(t, "/web", []string{"other"}, t0, time.Minute)); err == nil {
		t.Fatal("wrong audience accepted")
	}
	if _, err := e.authz.Authenticate("Bearer " + e.local.token(t, "/db", []string{audience}, t0, time.Minute)); !errors.Is(err, authz.ErrNotAllowed) {
		t.Fatalf("/db: %v", err)
	}
	if n := e.authz.CacheLen(); n != 2 {
		t.Fatalf("%d tokens cached, want 2 (the valid ones, allowed or not)", n)
	}
	e.clock.Advance(time.Minute + jwtsvid.Leeway)
	if _, err := e.authz.Authenticate("Bearer " + tok); !errors.Is(err, jwtsvid.ErrExpired) {
		t.Fatalf("expired cached token: %v", err)
	}

	tok = e.local.token(t, "/web", []string{audience}, e.clock.Now(), time.Minute)
	if _, err := e.authz.Authenticate("Bearer " + tok); err != nil {
		t.Fatal(err)
	}
	b, err := e.bundles.GetJWTBundleForTrustDomain(td)
	if err != nil {
		t.Fatal(err)
	}
	b.RemoveJWTAuthority(e.local.jwtKey.ID)
	if _, err := e.authz.Authenticate("Bearer " + tok); !errors.Is(err, jwtsvid.ErrKeyNotFound) {
		t.Fatalf("token of a removed key: %v", err)
	}
	// The same kid now names another key.
	if err := b.AddJWTAuthority(e.local.jwtKey.ID, mustKey(t).Public()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.authz.Authenticate("Bearer " + tok); !errors.Is(err, jwtsvid.ErrSignature) {
		t.Fatalf("token of a replaced key: %v", err)
	}
}

func TestNewJWTAuthorizerRefusesIncompleteConfig(t *testing.T) {
	b := jwtbundle.NewSet()
	p := authz.TrustDomain(td)
	for name, cfg := range map[string]authz.JWTConfig{
		"no bundles":     {Audience: []string{"a"}, Policy: p},
		"no audience":    {Bundles: b, Policy: p},
		"empty audience": {Bundles: b, Audience: []string{""}, Policy: p},
		"no policy":      {Bundles: b, Audience: []string{"a"}},
	} {
		if _, err := authz.NewJWTAuthorizer(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// grpcEnv serves the gRPC health service behind the interceptors, on
// bufconn, and records the caller each handler saw.
func startGRPC(t *testing.T, e *jwtEnv) (healthpb.HealthClient, func() string) {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	callers := make(chan string, 10)
	record := func(ctx context.Context) {
		id, _ := authz.CallerID(ctx)
		callers <- id.String()
	}
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(e.authz.UnaryServerInterceptor(), func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			record(ctx)
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(e.authz.StreamServerInterceptor(), func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			record(ss.Context())
			return h(srv, ss)
		}),
	)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		<-done
	})
	return healthpb.NewHealthClient(conn), func() string {
		select {
		case c := <-callers:
			return c
		default:
			return ""
		}
	}
}

func TestInterceptors(t *testing.T) {
	for _, tt := range authCases {
		t.Run(tt.name, func(t *testing.T) {
			e := newJWTEnv(t, 0)
			client, caller := startGRPC(t, e)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for _, v := range tt.header(t, e) {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", v)
			}

			_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
			if status.Code(err) != tt.code {
				t.Fatalf("unary: %v, want %s", err, tt.code)
			}
			if got := caller(); got != tt.caller {
				t.Fatalf("unary handler saw caller %q, want %q", got, tt.caller)
			}

			stream, err := client.Watch(ctx, &healthpb.HealthCheckRequest{})
			if err == nil {
				_, err = stream.Recv()
			}
			if status.Code(err) != tt.code {
				t.Fatalf("stream: %v, want %s", err, tt.code)
			}
			if got := caller(); got != tt.caller {
				t.Fatalf("stream handler saw caller %q, want %q", got, tt.caller)
			}
		})
	}
}

// TestJWTAuthorizerConcurrent: many callers at once, with more tokens
// than the cache holds, all get their own identity.
func TestJWTAuthorizerConcurrent(t *testing.T) {
	e := newJWTEnv(t, 4)
	tokens := make([]string, 12)
	for i := range tokens {
		tokens[i] = e.local.token(t, fmt.Sprintf("/ns/prod/w%d", i), []string{audience}, t0, time.Minute)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 40 {
				k := (g + i) % len(tokens)
				id, err := e.authz.Authenticate("Bearer " + tokens[k])
				if err != nil || id.Path() != fmt.Sprintf("/ns/prod/w%d", k) {
					errs <- fmt.Errorf("token %d: %v, %v", k, id, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := e.authz.CacheLen(); n > 4 {
		t.Fatalf("%d tokens cached, bound 4", n)
	}
}
