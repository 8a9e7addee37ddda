package admin_test

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/emptypb"

	"writ.dev/writ/ca/admin"
	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/internal/leakcheck"
	"writ.dev/writ/internal/peercred"

	"writ.dev/writ/internal/logkey"
)

var (
	td        = spiffeid.RequireTrustDomainFromString("example.org")
	startTime = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
)

const (
	agentID = "spiffe://example.org/writ/agent/node1"
	// unlistedMethod is registered on the test server but has no policy.
	unlistedMethod = "/writ.test.v1.Unlisted/Call"
)

// TestMain fails the run if the tests leave goroutines behind.
func TestMain(m *testing.M) { os.Exit(leakcheck.Main(m)) }

// env is an admin API server on a real Unix socket with a client
// connected to it.
type env struct {
	store   testStore
	clock   *fakeclock.Clock
	logs    *logRecorder
	svc     *admin.Service
	socket  string
	conn    *grpc.ClientConn
	entries adminv1.EntryServiceClient
	agents  adminv1.AgentServiceClient
	tokens  adminv1.JoinTokenServiceClient
	bundles adminv1.BundleServiceClient
	servers adminv1.ServerServiceClient
	health  healthpb.HealthClient
	// unlistedCalled is set if the handler of unlistedMethod ran.
	unlistedCalled atomic.Bool
}

type envOptions struct {
	// wrap, if set, wraps the store the service uses (fault injection).
	wrap func(admin.Store) admin.Store
	// cfg, if set, edits the Config before New.
	cfg func(*admin.Config)
	// allowed, if non-nil, replaces the allowed uid set.
	allowed []uint32
	// creds are the server's transport credentials; peercred by default.
	creds credentials.TransportCredentials
	// noInterceptors builds the server without the service's interceptors.
	noInterceptors bool
}

func newEnv(t *testing.T, opts envOptions) *env {
	t.Helper()
	e := &env{
		store: newStore(t),
		clock: fakeclock.New(startTime),
		logs:  newLogRecorder(t),
	}
	var store admin.Store = e.store
	if opts.wrap != nil {
		store = opts.wrap(store)
	}
	cfg := admin.Config{
		TrustDomain: td,
		Store:       store,
		Clock:       e.clock,
		Logger:      slog.New(e.logs),
	}
	if opts.cfg != nil {
		opts.cfg(&cfg)
	}
	svc, err := admin.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if opts.allowed != nil {
		admin.SetAllowedUIDs(svc, opts.allowed...)
	}
	e.svc = svc

	dir, err := os.MkdirTemp("", "w")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e.socket = filepath.Join(dir, "admin.sock")
	l, err := net.Listen("unix", e.socket)
	if err != nil {
		t.Fatal(err)
	}

	creds := opts.creds
	if creds == nil {
		creds = peercred.TransportCredentials()
	}
	serverOpts := []grpc.ServerOption{
		grpc.Creds(creds),
		grpc.MaxRecvMsgSize(admin.RecommendedMaxRecvMsgSize),
	}
	if !opts.noInterceptors {
		serverOpts = append(serverOpts,
			grpc.ChainUnaryInterceptor(svc.UnaryInterceptor()),
			grpc.ChainStreamInterceptor(svc.StreamInterceptor()))
	}
	srv := grpc.NewServer(serverOpts...)
	svc.Register(srv)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	srv.RegisterService(unlistedDesc(&e.unlistedCalled), struct{}{})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	conn, err := grpc.NewClient("unix://"+e.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.GracefulStop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	e.conn = conn
	e.entries = adminv1.NewEntryServiceClient(conn)
	e.agents = adminv1.NewAgentServiceClient(conn)
	e.tokens = adminv1.NewJoinTokenServiceClient(conn)
	e.bundles = adminv1.NewBundleServiceClient(conn)
	e.servers = adminv1.NewServerServiceClient(conn)
	e.health = healthpb.NewHealthClient(conn)
	return e
}

// unlistedDesc describes a service that the admin policy table does not
// know; its handler sets called.
func unlistedDesc(called *atomic.Bool) *grpc.ServiceDesc {
	return &grpc.ServiceDesc{
		ServiceName: "writ.test.v1.Unlisted",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Call",
			Handler: func(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
				in := new(emptypb.Empty)
				if err := dec(in); err != nil {
					return nil, err
				}
				h := func(context.Context, any) (any, error) {
					called.Store(true)
					return &emptypb.Empty{}, nil
				}
				if ic == nil {
					return h(ctx, in)
				}
				return ic(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: unlistedMethod}, h)
			},
		}},
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// logRecorder is a slog.Handler that keeps every record and echoes it to
// t.Log.
type logRecorder struct {
	t testing.TB
	// quiet stops the echo to t.Log (benchmarks).
	quiet   bool
	mu      sync.Mutex // guards records
	records []logRecord
}

type logRecord struct {
	level slog.Level
	msg   string
	attrs map[string]slog.Value
	// text is the whole record as the text handler writes it.
	text string
}

func newLogRecorder(t testing.TB) *logRecorder { return &logRecorder{t: t} }

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (r *logRecorder) Handle(ctx context.Context, rec slog.Record) error {
	var buf bytes.Buffer
	if err := slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}).Handle(ctx, rec); err != nil {
		return err
	}
	lr := logRecord{level: rec.Level, msg: rec.Message, attrs: make(map[string]slog.Value), text: buf.String()}
	rec.Attrs(func(a slog.Attr) bool {
		lr.attrs[a.Key] = a.Value.Resolve()
		return true
	})
	r.mu.Lock()
	r.records = append(r.records, lr)
	r.mu.Unlock()
	if !r.quiet {
		r.t.Log(strings.TrimSpace(lr.text))
	}
	return nil
}

// The service adds no attributes or groups through the logger, so these
// need not keep them.
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }

func (r *logRecorder) all() []logRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]logRecord(nil), r.records...)
}

// audit returns the audit records of method.
func (r *logRecorder) audit(method string) []logRecord {
	var out []logRecord
	for _, rec := range r.all() {
		if v, ok := rec.attrs[logkey.Audit]; ok && v.Kind() == slog.KindBool && v.Bool() &&
			rec.attrs[logkey.Method].String() == method {
			out = append(out, rec)
		}
	}
	return out
}

// reset forgets the records so far.
func (r *logRecorder) reset() {
	r.mu.Lock()
	r.records = nil
	r.mu.Unlock()
}
