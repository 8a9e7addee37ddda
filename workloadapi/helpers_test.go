package workloadapi_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"writ.dev/writ/internal/testuser"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/jwtsvid"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/workloadapi"
	"writ.dev/writ/workloadapi/unixattest"
)

var (
	td       = spiffeid.RequireTrustDomainFromString("example.org")
	agentID  = spiffeid.RequireFromPath(td, "/agent/node1")
	otherTD  = spiffeid.RequireTrustDomainFromString("other.org")
	jwtKeyID = "k1"
)

// testCA mints X.509-SVIDs and JWT-SVIDs at runtime.
type testCA struct {
	iss    *x509ca.Issuer
	jwtKey jwtsvid.Key
	bundle *spiffebundle.Bundle
}

func newTestCA(t testing.TB, now time.Time) *testCA {
	t.Helper()
	key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509ca.NewSelfSignedCA(now.Add(-time.Minute), td, key, 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	jk, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	b := spiffebundle.FromX509Authorities(td, []*x509.Certificate{cert})
	if err := b.AddJWTAuthority(jwtKeyID, jk.Public()); err != nil {
		t.Fatal(err)
	}
	return &testCA{iss: &x509ca.Issuer{Cert: cert, Signer: key}, jwtKey: jwtsvid.Key{ID: jwtKeyID, Signer: jk}, bundle: b}
}

// svid signs an X.509-SVID for e at now.
func (ca *testCA) svid(t testing.TB, e *entry.Entry, now time.Time, ttl time.Duration) *svidcache.X509SVID {
	t.Helper()
	key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509ca.SignX509SVID(now, ca.iss, x509ca.SVIDParams{ID: e.SPIFFEID, DNSNames: e.DNSNames, TTL: ttl, PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	s, err := svidcache.NewX509SVID(e.ID, [][]byte{der}, key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// jwt signs a JWT-SVID with the CA's key.
func (ca *testCA) jwt(t testing.TB, now time.Time, id spiffeid.ID, aud []string, ttl time.Duration) string {
	t.Helper()
	tok, _, err := jwtsvid.Sign(now, ca.jwtKey, id, aud, ttl, now.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// signer signs JWT-SVIDs for the cache, as the agent does through the
// server.
type signer struct {
	ca    *testCA
	clk   clock.Clock
	cache atomic.Pointer[svidcache.Cache]
	calls atomic.Int32
	mu    sync.Mutex // guards err
	err   error
	// together, if set, makes each call wait (up to 10 s) until that
	// many calls have arrived, and fail otherwise: the calls must be
	// made concurrently.
	together atomic.Int32
	arrived  atomic.Int32
}

// errNotTogether: the calls a signer expected at once did not come.
var errNotTogether = errors.New("test signer: calls did not arrive together")

func (s *signer) SignJWTSVID(_ context.Context, entryID string, audience []string) (string, error) {
	s.calls.Add(1)
	if n := s.together.Load(); n > 0 {
		s.arrived.Add(1)
		deadline := time.Now().Add(10 * time.Second)
		for s.arrived.Load() < n {
			if time.Now().After(deadline) {
				return "", errNotTogether
			}
			time.Sleep(time.Millisecond)
		}
	}
	s.mu.Lock()
	err := s.err
	s.mu.Unlock()
	if err != nil {
		return "", err
	}
	e, ok := s.cache.Load().Entry(entryID)
	if !ok {
		return "", svidcache.ErrUnknownEntry
	}
	now := s.clk.Now()
	tok, _, err := jwtsvid.Sign(now, s.ca.jwtKey, e.SPIFFEID, audience, 5*time.Minute, now.Add(24*time.Hour))
	return tok, err
}

func (s *signer) setErr(err error) {
	s.mu.Lock()
	s.err = err
	s.mu.Unlock()
}

// env is a Workload API server on a real socket in a short temporary
// directory, with a real svidcache.Cache and a real unixattest.Attestor.
type env struct {
	t      testing.TB
	clk    clock.Clock
	fake   *fakeclock.Clock // nil with the real clock
	ca     *testCA
	cache  *svidcache.Cache
	signer *signer
	srv    *workloadapi.Server
	dir    string
	path   string
	addr   string // unix:///path
	stop   func() error
}

type envOption func(*envConfig)

type envConfig struct {
	fake   bool
	quiet  bool // log warnings and errors only
	server func(*workloadapi.Config)
	dir    func(t testing.TB, dir string) // prepares the socket directory
}

// withFakeClock runs the cache and server on a fake clock.
func withFakeClock() envOption { return func(c *envConfig) { c.fake = true } }

// withQuietLog logs only warnings and errors (for benchmarks).
func withQuietLog() envOption { return func(c *envConfig) { c.quiet = true } }

// withConfig changes the server's Config.
func withConfig(f func(*workloadapi.Config)) envOption {
	return func(c *envConfig) { c.server = f }
}

// withPublicDir makes the socket directory reachable by other users.
func withPublicDir() envOption {
	return func(c *envConfig) {
		c.dir = func(t testing.TB, dir string) {
			if err := os.Chmod(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// tempDir returns a new short directory (sun_path is short).
func tempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "w")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func newEnv(t testing.TB, opts ...envOption) *env {
	t.Helper()
	var cfg envConfig
	for _, o := range opts {
		o(&cfg)
	}
	now := time.Now()
	e := &env{t: t, clk: clock.Real()}
	if cfg.fake {
		e.fake = fakeclock.New(now)
		e.clk = e.fake
	}
	e.ca = newTestCA(t, now)
	e.signer = &signer{ca: e.ca, clk: e.clk}
	log := testLogger(t)
	if cfg.quiet {
		log = slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	cache, err := svidcache.New(svidcache.Config{TrustDomain: td, Clock: e.clk, Logger: log, JWTSigner: e.signer})
	if err != nil {
		t.Fatal(err)
	}
	e.cache = cache
	e.signer.cache.Store(cache)
	cache.Apply(svidcache.Update{Full: true, Bundle: e.ca.bundle})

	e.dir = tempDir(t)
	if cfg.dir != nil {
		cfg.dir(t, e.dir)
	}
	e.path = filepath.Join(e.dir, "s")
	e.addr = "unix://" + e.path
	scfg := workloadapi.Config{
		SocketPath:  e.path,
		Cache:       cache,
		Attestor:    unixattest.New(unixattest.Config{Logger: log}),
		TrustDomain: td,
		Clock:       e.clk,
		Logger:      log,
	}
	if cfg.server != nil {
		cfg.server(&scfg)
	}
	e.srv, err = workloadapi.New(scfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	cacheDone := make(chan struct{})
	go func() {
		defer close(cacheDone)
		cache.Run(ctx)
	}()
	go func() { runErr <- e.srv.Run(ctx) }()
	select {
	case <-e.srv.Ready():
	case err := <-runErr:
		cancel()
		<-cacheDone
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("server not ready")
	}
	var once sync.Once
	var stopErr error
	e.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-runErr:
			case <-time.After(20 * time.Second):
				stopErr = errors.New("Run did not return")
			}
			<-cacheDone
		})
		return stopErr
	}
	t.Cleanup(func() {
		if err := e.stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return e
}

// selfSelector is the selector of this process's uid.
func selfSelector() string { return fmt.Sprintf("unix:uid:%d", os.Geteuid()) }

// newEntry returns a valid entry for path with selectors.
func newEntry(t testing.TB, path string, selectors ...string) *entry.Entry {
	t.Helper()
	e := &entry.Entry{ID: entry.NewID(), SPIFFEID: spiffeid.RequireFromPath(td, path), ParentID: agentID}
	for _, s := range selectors {
		sel, err := entry.ParseSelector(s)
		if err != nil {
			t.Fatal(err)
		}
		e.Selectors = append(e.Selectors, sel)
	}
	e.Normalize()
	if err := e.Validate(td); err != nil {
		t.Fatal(err)
	}
	return e
}

// add adds an entry for path with selectors (default: this process's
// uid) and signs its SVID for ttl (default an hour).
func (e *env) add(path string, selectors ...string) *entry.Entry {
	e.t.Helper()
	if len(selectors) == 0 {
		selectors = []string{selfSelector()}
	}
	en := newEntry(e.t, path, selectors...)
	e.cache.Apply(svidcache.Update{Entries: []*entry.Entry{en}})
	e.sign(en, time.Hour)
	return en
}

// sign stores a new SVID for en, valid for ttl from now.
func (e *env) sign(en *entry.Entry, ttl time.Duration) *svidcache.X509SVID {
	e.t.Helper()
	s := e.ca.svid(e.t, en, e.clk.Now(), ttl)
	if err := e.cache.SetX509SVID(s); err != nil {
		e.t.Fatal(err)
	}
	return s
}

func (e *env) remove(en *entry.Entry) {
	e.cache.Apply(svidcache.Update{Deleted: []string{en.ID}})
}

// client returns a go-spiffe Workload API client of the server.
func (e *env) client() *spiffewl.Client {
	e.t.Helper()
	c, err := spiffewl.New(context.Background(), spiffewl.WithAddr(e.addr))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// raw returns a generated client with no security header of its own, and
// its connection.
func (e *env) raw() (workload.SpiffeWorkloadAPIClient, *grpc.ClientConn) {
	e.t.Helper()
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	return workload.NewSpiffeWorkloadAPIClient(conn), conn
}

// withHeader adds the security header.
func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, workloadapi.SecurityHeader, "true")
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// wantCode fails unless err is a status error with code.
func wantCode(t testing.TB, err error, code codes.Code) {
	t.Helper()
	if got := status.Code(err); got != code {
		t.Fatalf("got %v (%v), want code %v", got, err, code)
	}
}

// recvResult is one Recv of a stream.
type recvResult[T any] struct {
	msg *T
	err error
}

// recvLoop receives from a stream into a channel until it fails.
func recvLoop[T any](s interface{ Recv() (*T, error) }) <-chan recvResult[T] {
	ch := make(chan recvResult[T], 64)
	go func() {
		for {
			m, err := s.Recv()
			ch <- recvResult[T]{m, err}
			if err != nil {
				close(ch)
				return
			}
		}
	}()
	return ch
}

// next waits for the next result of a recvLoop.
func next[T any](t testing.TB, ch <-chan recvResult[T]) recvResult[T] {
	t.Helper()
	select {
	case r, ok := <-ch:
		if !ok {
			t.Fatal("stream already ended")
		}
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no message within 10s")
	}
	panic("unreachable")
}

// waitSubscriptions waits until the cache has n subscriptions: a stream
// the server handles subscribes before it sends or waits. The server
// offers no event for it, so this polls, with a deadline.
func (e *env) waitSubscriptions(n int) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for e.cache.Stats().Subscriptions < n {
		if time.Now().After(deadline) {
			e.t.Fatalf("%d cache subscriptions after 10s, want %d", e.cache.Stats().Subscriptions, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// svidIDs lists the SPIFFE IDs of a response.
func svidIDs(r *workload.X509SVIDResponse) []string {
	var out []string
	for _, s := range r.GetSvids() {
		out = append(out, s.GetSpiffeId())
	}
	return out
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// ---- Other users ------------------------------------------------------

var (
	pubBinOnce sync.Once
	pubBinDir  string
	pubBin     string
	pubBinErr  error
)

// publicBin returns a copy of the test binary that every user can run.
func publicBin(t testing.TB) string {
	t.Helper()
	pubBinOnce.Do(func() {
		if pubBinDir, pubBinErr = os.MkdirTemp("", "wabin"); pubBinErr != nil {
			return
		}
		if pubBinErr = os.Chmod(pubBinDir, 0o755); pubBinErr != nil {
			return
		}
		self, err := os.Executable()
		if err != nil {
			pubBinErr = err
			return
		}
		pubBin = filepath.Join(pubBinDir, "child")
		pubBinErr = copyFile(self, pubBin, 0o755)
	})
	if pubBinErr != nil {
		t.Fatal(pubBinErr)
	}
	return pubBin
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// The agent's types are what the server takes.
var (
	_ workloadapi.Cache    = (*svidcache.Cache)(nil)
	_ workloadapi.Attestor = (*unixattest.Attestor)(nil)
)

func requireRoot(t testing.TB) { testuser.RequireRoot(t) }

func testUser(t testing.TB) (uid, gid uint32) { return testuser.Lookup(t) }
