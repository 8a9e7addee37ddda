package nodeapi_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"writ.dev/writ/ca/admin"
	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/attest/jointoken"
	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/datastore/boltstore"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/ca/keymanager/keystore"
	"writ.dev/writ/ca/nodeapi"
	"writ.dev/writ/internal/leakcheck"
	"writ.dev/writ/internal/metrics"
	"writ.dev/writ/internal/testca"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// TestMain fails the run if the tests leave goroutines behind.
func TestMain(m *testing.M) { os.Exit(leakcheck.Main(m)) }

// boltstore is the store the node API is served from.
var _ nodeapi.Store = (*boltstore.Store)(nil)

// testStore is a boltstore with hooks for fault injection.
type testStore struct {
	*boltstore.Store
	// beforeUpdateAgent, if set, runs once before the next UpdateAgent.
	beforeUpdateAgent atomic.Pointer[func()]
	// beforeUpdateBundle, if set, runs once before the next UpdateBundle.
	beforeUpdateBundle atomic.Pointer[func()]
	// eventsGate, if set, blocks Events until it is closed.
	eventsGate atomic.Pointer[chan struct{}]
	// eventsErr, if set, fails Events.
	eventsErr atomic.Pointer[error]
	// consumeErr, if set, fails ConsumeJoinToken.
	consumeErr atomic.Pointer[error]
}

func (s *testStore) ConsumeJoinToken(ctx context.Context, hash string, now time.Time) (*datastore.JoinToken, error) {
	if err := s.consumeErr.Load(); err != nil {
		return nil, *err
	}
	return s.Store.ConsumeJoinToken(ctx, hash, now)
}

func (s *testStore) UpdateAgent(ctx context.Context, id spiffeid.ID, fn func(*datastore.Agent) error) (*datastore.Agent, error) {
	if h := s.beforeUpdateAgent.Swap(nil); h != nil {
		(*h)()
	}
	return s.Store.UpdateAgent(ctx, id, fn)
}

func (s *testStore) UpdateBundle(ctx context.Context, td spiffeid.TrustDomain, fn func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error)) (*spiffebundle.Bundle, error) {
	if h := s.beforeUpdateBundle.Swap(nil); h != nil {
		(*h)()
	}
	return s.Store.UpdateBundle(ctx, td, fn)
}

func (s *testStore) Events(ctx context.Context, after uint64, limit int) ([]datastore.Event, error) {
	if g := s.eventsGate.Load(); g != nil {
		select {
		case <-*g:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if err := s.eventsErr.Load(); err != nil {
		return nil, *err
	}
	return s.Store.Events(ctx, after, limit)
}

// switchKM is a key manager whose active keys a test can replace.
type switchKM struct {
	*keymanager.Manager
	override atomic.Pointer[keymanager.Active]
	// none makes Active return nil.
	none atomic.Bool
}

func (k *switchKM) Active() *keymanager.Active {
	if k.none.Load() {
		return nil
	}
	if a := k.override.Load(); a != nil {
		return a
	}
	return k.Manager.Active()
}

// env is a node API server on 127.0.0.1 with a real boltstore and key
// manager.
type env struct {
	t     testing.TB
	dir   string
	store *testStore
	clock *fakeclock.Clock
	km    *switchKM
	logs  *logRecorder
	svc   *nodeapi.Service
	addr  string
	// runDone receives Run's result.
	runDone chan error
	cancel  context.CancelFunc
	srv     *grpc.Server
}

type envOptions struct {
	maxEvents int
	// discardLogs keeps benchmarks quiet.
	discardLogs bool
	// extra registers more services on the server.
	extra func(*grpc.Server)
	// authority makes the CA certificates (self-signed if nil).
	authority keymanager.Authority
	// nodeAttestors, if set, returns the node attestors to enable.
	nodeAttestors func(clock.Clock) []nodeapi.NodeAttestor
	// metrics, if set, receives the service's metrics.
	metrics *metrics.Server
	// parent, if set, is the parent deployment's taint (Config.Parent).
	parent nodeapi.ParentTaint
	// maxAttestations and maxAttestationsPerSource, if set, bound the
	// attestations in progress.
	maxAttestations, maxAttestationsPerSource int
}

// testStart is the fake clock's start: near real time, so that go-spiffe,
// which reads the system clock, accepts what the server signs.
func testStart() time.Time { return time.Now().Truncate(time.Second) }

func newEnv(t testing.TB, opts envOptions) *env {
	t.Helper()
	dir := t.TempDir()
	bs, err := boltstore.Open(filepath.Join(dir, "db"), boltstore.Options{MaxEvents: opts.maxEvents})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() {
		if err := bs.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	e := &env{t: t, dir: dir, store: &testStore{Store: bs}, clock: fakeclock.New(testStart()), logs: newLogRecorder(t, opts.discardLogs)}
	log := slog.New(e.logs)
	ks, err := keystore.NewDisk(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	km, err := keymanager.New(context.Background(), keymanager.Config{
		ServerID:    "server-a",
		KeyStore:    ks,
		Authority:   opts.authority,
		TrustDomain: td,
		KeyType:     "ec-p256",
		CATTL:       24 * time.Hour,
		Store:       e.store,
		Clock:       e.clock,
		Logger:      log,
	})
	if err != nil {
		t.Fatalf("key manager: %v", err)
	}
	e.km = &switchKM{Manager: km}
	var attestors []nodeapi.NodeAttestor
	if opts.nodeAttestors != nil {
		attestors = opts.nodeAttestors(e.clock)
	}
	svc, err := nodeapi.New(nodeapi.Config{
		NodeAttestors: attestors,
		TrustDomain:   td,
		Store:         e.store,
		KeyManager:    e.km,
		Clock:         e.clock,
		Logger:        log,
		Metrics:       opts.metrics,
		Parent:        opts.parent,

		MaxAttestations:          opts.maxAttestations,
		MaxAttestationsPerSource: opts.maxAttestationsPerSource,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.svc = svc
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.runDone = make(chan error, 1)
	go func() { e.runDone <- svc.Run(ctx) }()
	t.Cleanup(e.stop)
	select {
	case <-svc.Ready():
	case err := <-e.runDone:
		t.Fatalf("Run returned before ready: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("service not ready after 10s")
	}

	srv := grpc.NewServer(svc.ServerOptions()...)
	svc.Register(srv)
	if opts.extra != nil {
		opts.extra(srv)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = lis.Addr().String()
	e.srv = srv
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("Serve: %v", err)
		}
	})
	return e
}

// stop cancels Run and waits for it; idempotent.
func (e *env) stop() {
	e.cancel()
	if e.runDone == nil {
		return
	}
	select {
	case err := <-e.runDone:
		if err != nil {
			e.t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		e.t.Errorf("Run did not return 10s after its context ended")
	}
	e.runDone = nil
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (e *env) bundle() *spiffebundle.Bundle {
	e.t.Helper()
	b, err := e.store.FetchBundle(context.Background(), td)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// clientTLS is a client configuration that authenticates the server as
// the Writ server of td under the store's current bundle, and presents
// cert if it is not nil.
func (e *env) clientTLS(cert *tls.Certificate) *tls.Config {
	roots := e.bundle()
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // verified below as an X.509-SVID
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			id, _, err := x509svid.ParseAndVerify(raw, roots, x509svid.WithTime(e.clock.Now()))
			if err != nil {
				return err
			}
			if id != admin.ServerID(td) {
				return fmt.Errorf("server is %s", id)
			}
			return nil
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if cert == nil {
				return &tls.Certificate{}, nil
			}
			return cert, nil
		},
	}
}

// dial connects to the server, presenting cert if it is not nil.
func (e *env) dial(cert *tls.Certificate) *grpc.ClientConn {
	e.t.Helper()
	return e.dialFrom("", cert)
}

// dialFrom is dial from the local address src (a loopback IP address
// such as 127.0.0.2), or from the one the system picks if src is empty.
func (e *env) dialFrom(src string, cert *tls.Certificate) *grpc.ClientConn {
	e.t.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(e.clientTLS(cert)))}
	if src != "" {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		}))
	}
	conn, err := grpc.NewClient(e.addr, opts...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	return conn
}

func (e *env) client(cert *tls.Certificate) nodev1.NodeServiceClient {
	return nodev1.NewNodeServiceClient(e.dial(cert))
}

// newToken stores a join token for id valid for ttl and returns it.
func (e *env) newToken(id string, ttl time.Duration) string {
	e.t.Helper()
	tok := jointoken.New()
	err := e.store.CreateJoinToken(context.Background(), &datastore.JoinToken{
		Hash:      jointoken.Hash(tok),
		SPIFFEID:  spiffeid.RequireFromString(id),
		ExpiresAt: e.clock.Now().Add(ttl),
		CreatedAt: e.clock.Now(),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

func newKey(t testing.TB) *ecdsa.PrivateKey { return testca.NewKey(t) }

func newCSR(t testing.TB, key crypto.Signer) []byte {
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

// agent is an attested agent with a connection authenticated by its SVID.
type agent struct {
	id     spiffeid.ID
	key    *ecdsa.PrivateKey
	cert   *tls.Certificate
	leaf   *x509.Certificate
	client nodev1.NodeServiceClient
}

// attest attests an agent as id with a fresh join token and connects
// with its SVID.
func (e *env) attest(id string) *agent {
	e.t.Helper()
	key := newKey(e.t)
	resp, err := e.client(nil).Attest(ctxT(e.t), &nodev1.AttestRequest{JoinToken: e.newToken(id, time.Hour), Csr: newCSR(e.t, key)})
	if err != nil {
		e.t.Fatalf("Attest: %v", err)
	}
	a := &agent{id: spiffeid.RequireFromString(id), key: key}
	a.setSVID(e.t, resp.SvidChain)
	a.client = e.client(a.cert)
	return a
}

func (a *agent) setSVID(t testing.TB, chain [][]byte) {
	t.Helper()
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		t.Fatal(err)
	}
	a.leaf = leaf
	a.cert = &tls.Certificate{Certificate: chain, PrivateKey: a.key, Leaf: leaf}
}

func (a *agent) serial() string { return a.leaf.SerialNumber.String() }

// createEntry stores an entry for spiffeID under parent.
func (e *env) createEntry(spiffeID, parent string, edit func(*entry.Entry)) *entry.Entry {
	e.t.Helper()
	en := &entry.Entry{
		SPIFFEID:  spiffeid.RequireFromString(spiffeID),
		ParentID:  spiffeid.RequireFromString(parent),
		Selectors: []entry.Selector{{Type: "unix", Value: "uid:" + fmt.Sprint(nextUID.Add(1))}},
	}
	if edit != nil {
		edit(en)
	}
	res, err := e.store.CreateEntries(context.Background(), []*entry.Entry{en})
	if err != nil {
		e.t.Fatal(err)
	}
	if res[0].Err != nil {
		e.t.Fatal(res[0].Err)
	}
	return res[0].Entry
}

var nextUID atomic.Int64

func (e *env) setBanned(id spiffeid.ID, banned bool) {
	e.t.Helper()
	_, err := e.store.UpdateAgent(context.Background(), id, func(a *datastore.Agent) error {
		a.Banned = banned
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) fetchAgent(id spiffeid.ID) *datastore.Agent {
	e.t.Helper()
	a, err := e.store.FetchAgent(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return a
}

// wantCode fails t unless err is a gRPC status with code (and, if msg is
// not empty, that message).
func wantCode(t testing.TB, err error, code codes.Code, msg string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("error %v is not a gRPC status (want %v)", err, code)
	}
	if st.Code() != code || (msg != "" && st.Message() != msg) {
		t.Fatalf("got %v %q, want %v %q", st.Code(), st.Message(), code, msg)
	}
}

// eventually polls cond until it holds or 5s pass.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 5s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// logRecorder is a slog.Handler that keeps every record and echoes it to
// t.Log.
type logRecorder struct {
	t       testing.TB
	discard bool
	mu      sync.Mutex // guards records
	records []logRecord
}

type logRecord struct {
	level slog.Level
	msg   string
	attrs map[string]string
	text  string
}

func newLogRecorder(t testing.TB, discard bool) *logRecorder {
	return &logRecorder{t: t, discard: discard}
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return !r.discard }

func (r *logRecorder) Handle(ctx context.Context, rec slog.Record) error {
	var buf bytes.Buffer
	if err := slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}).Handle(ctx, rec); err != nil {
		return err
	}
	lr := logRecord{level: rec.Level, msg: rec.Message, attrs: make(map[string]string), text: buf.String()}
	rec.Attrs(func(a slog.Attr) bool {
		lr.attrs[a.Key] = a.Value.Resolve().String()
		return true
	})
	r.mu.Lock()
	r.records = append(r.records, lr)
	r.mu.Unlock()
	r.t.Log(strings.TrimSpace(lr.text))
	return nil
}

func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }

func (r *logRecorder) all() []logRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]logRecord(nil), r.records...)
}

// find returns the records with this message.
func (r *logRecorder) find(msg string) []logRecord {
	var out []logRecord
	for _, rec := range r.all() {
		if rec.msg == msg {
			out = append(out, rec)
		}
	}
	return out
}
