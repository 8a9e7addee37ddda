package downstream_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"writ.dev/writ/agent/svidcache"
	agentv1 "writ.dev/writ/ca/api/agent/v1"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/leakcheck"
	"writ.dev/writ/workloadapi"
	"writ.dev/writ/workloadapi/downstream"
	"writ.dev/writ/workloadapi/unixattest"
)

var (
	td      = spiffeid.RequireTrustDomainFromString("example.org")
	agentID = spiffeid.RequireFromPath(td, "/writ/agent/node1")
)

// forwarder stands in for the agent's connection to the server: it
// records the entry IDs it is asked for and answers with err, or with a
// fixed chain.
type forwarder struct {
	mu      sync.Mutex // guards entries
	entries []string
	err     error
}

func (f *forwarder) MintX509CA(_ context.Context, entryID string, _ []byte, _ time.Duration) ([][]byte, [][]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.entries = append(f.entries, entryID)
	if f.err != nil {
		return nil, nil, f.err
	}
	return [][]byte{[]byte("ca")}, [][]byte{[]byte("root")}, nil
}

func (f *forwarder) PublishJWTAuthority(_ context.Context, entryID, _ string, _ []byte, _ time.Time) (time.Time, []byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.entries = append(f.entries, entryID)
	return time.Time{}, nil, errors.New("not used")
}

func (f *forwarder) asked() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.entries)
}

// TestMain fails the run if the tests leave goroutines behind.
func TestMain(m *testing.M) { os.Exit(leakcheck.Main(m)) }

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// env is a Workload API server with the DownstreamService registered, on
// a real socket, with a real svidcache.Cache and real attestation by
// peer credentials.
type env struct {
	t      *testing.T
	cache  *svidcache.Cache
	fwd    *forwarder
	client agentv1.DownstreamServiceClient
	// noHeader is a client that does not send the security header.
	noHeader agentv1.DownstreamServiceClient
	root     *x509.Certificate
}

func newEnv(t *testing.T) *env {
	t.Helper()
	log := slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cache, err := svidcache.New(svidcache.Config{TrustDomain: td, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	root, err := x509ca.NewSelfSignedCA(time.Now(), td, key, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cache.Apply(svidcache.Update{Full: true, Bundle: spiffebundle.FromX509Authorities(td, []*x509.Certificate{root})})
	dir, err := os.MkdirTemp("", "ds")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "s")
	srv, err := workloadapi.New(workloadapi.Config{SocketPath: path, Cache: cache, Attestor: unixattest.New(unixattest.Config{Logger: log}), TrustDomain: td, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, cache: cache, fwd: &forwarder{}, root: root}
	h, err := downstream.New(downstream.Config{Socket: srv, Cache: cache, Forwarder: e.fwd, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	h.Register(srv)
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	cacheDone := make(chan struct{})
	go func() { defer close(cacheDone); cache.Run(ctx) }()
	go func() { runErr <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-runErr:
		cancel()
		t.Fatalf("Run: %v", err)
	}
	conn, err := grpc.NewClient("unix://"+path, append(workloadapi.SecurityHeaderDialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	e.client = agentv1.NewDownstreamServiceClient(conn)
	bare, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	e.noHeader = agentv1.NewDownstreamServiceClient(bare)
	t.Cleanup(func() {
		bare.Close()
		conn.Close()
		cancel()
		if err := <-runErr; err != nil {
			t.Errorf("Run: %v", err)
		}
		<-cacheDone
	})
	return e
}

// add stores an entry matching this process's uid.
func (e *env) add(path string, isDownstream bool) *entry.Entry {
	e.t.Helper()
	sel, err := entry.ParseSelector(fmt.Sprintf("unix:uid:%d", os.Geteuid()))
	if err != nil {
		e.t.Fatal(err)
	}
	en := &entry.Entry{ID: entry.NewID(), SPIFFEID: spiffeid.RequireFromPath(td, path), ParentID: agentID, Selectors: []entry.Selector{sel}, Downstream: isDownstream}
	en.Normalize()
	if err := en.Validate(td); err != nil {
		e.t.Fatal(err)
	}
	e.cache.Apply(svidcache.Update{Entries: []*entry.Entry{en}})
	return en
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestRefusedWithoutDownstreamEntry(t *testing.T) {
	e := newEnv(t)
	check := func(what string) {
		t.Helper()
		_, err := e.client.MintX509CA(ctxT(t), &agentv1.MintX509CARequest{Csr: []byte("csr")})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("%s: MintX509CA: %v, want PermissionDenied", what, err)
		}
		_, err = e.client.PublishJWTAuthority(ctxT(t), &agentv1.PublishJWTAuthorityRequest{Authority: &agentv1.JWTAuthority{KeyId: "k", PublicKey: []byte("k"), ExpiresAt: 1}})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("%s: PublishJWTAuthority: %v, want PermissionDenied", what, err)
		}
		s, err := e.client.WatchBundle(ctxT(t), &agentv1.WatchBundleRequest{})
		if err == nil {
			_, err = s.Recv()
		}
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("%s: WatchBundle: %v, want PermissionDenied", what, err)
		}
	}
	check("no entry")
	e.add("/plain", false)
	check("a plain entry")
	if got := e.fwd.asked(); len(got) != 0 {
		t.Fatalf("the server was asked for %v", got)
	}
}

// TestSecurityHeaderRequired: every call without the security header
// fails with InvalidArgument, as on the Workload API, even for a caller
// with a downstream entry, and the server is not asked.
func TestSecurityHeaderRequired(t *testing.T) {
	e := newEnv(t)
	e.add("/regional", true)
	_, err := e.noHeader.MintX509CA(ctxT(t), &agentv1.MintX509CARequest{Csr: []byte("csr")})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("MintX509CA: %v, want InvalidArgument", err)
	}
	_, err = e.noHeader.PublishJWTAuthority(ctxT(t), &agentv1.PublishJWTAuthorityRequest{Authority: &agentv1.JWTAuthority{KeyId: "k", PublicKey: []byte("k"), ExpiresAt: 1}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("PublishJWTAuthority: %v, want InvalidArgument", err)
	}
	s, err := e.noHeader.WatchBundle(ctxT(t), &agentv1.WatchBundleRequest{})
	if err == nil {
		_, err = s.Recv()
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("WatchBundle: %v, want InvalidArgument", err)
	}
	if got := e.fwd.asked(); len(got) != 0 {
		t.Errorf("the server was asked for %v", got)
	}
	if _, err := e.client.MintX509CA(ctxT(t), &agentv1.MintX509CARequest{Csr: []byte("csr")}); err != nil {
		t.Errorf("with the header: %v", err)
	}
}

func TestMintForwardsTheDownstreamEntry(t *testing.T) {
	e := newEnv(t)
	e.add("/a-plain", false)
	down := e.add("/regional", true)
	resp, err := e.client.MintX509CA(ctxT(t), &agentv1.MintX509CARequest{Csr: []byte("csr"), PreferredTtl: 3600})
	if err != nil {
		t.Fatal(err)
	}
	if string(resp.CaChain[0]) != "ca" || string(resp.X509Authorities[0]) != "root" {
		t.Fatalf("answer %v", resp)
	}
	if got := e.fwd.asked(); !slices.Equal(got, []string{down.ID}) {
		t.Fatalf("the server was asked for %v, want the downstream entry %s", got, down.ID)
	}
	tests := []struct {
		name string
		err  error
		req  *agentv1.MintX509CARequest
		want codes.Code
	}{
		{name: "the server refuses the CSR", err: fmt.Errorf("wrapped: %w", status.Error(codes.InvalidArgument, "invalid CSR")), req: &agentv1.MintX509CARequest{Csr: []byte("csr")}, want: codes.InvalidArgument},
		{name: "no connection to the server", err: errors.New("server unavailable"), req: &agentv1.MintX509CARequest{Csr: []byte("csr")}, want: codes.Unavailable},
		{name: "no CSR", req: &agentv1.MintX509CARequest{}, want: codes.InvalidArgument},
		{name: "negative TTL", req: &agentv1.MintX509CARequest{Csr: []byte("csr"), PreferredTtl: -1}, want: codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.fwd.mu.Lock()
			e.fwd.err = tt.err
			e.fwd.mu.Unlock()
			if _, err := e.client.MintX509CA(ctxT(t), tt.req); status.Code(err) != tt.want {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestWatchBundle(t *testing.T) {
	e := newEnv(t)
	down := e.add("/regional", true)
	s, err := e.client.WatchBundle(ctxT(t), &agentv1.WatchBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	recv := func() *agentv1.WatchBundleResponse {
		t.Helper()
		m, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	first := recv()
	b, err := spiffebundle.Parse(td, first.Bundle)
	if err != nil || !b.HasX509Authority(e.root) || len(first.TaintedX509AuthorityIds) != 0 {
		t.Fatalf("first message: %v, tainted %v", err, first.TaintedX509AuthorityIds)
	}
	// A taint alone is sent, with the bundle.
	e.cache.Taint([]string{"ab12"}, nil)
	if m := recv(); !slices.Equal(m.TaintedX509AuthorityIds, []string{"ab12"}) {
		t.Fatalf("tainted %v", m.TaintedX509AuthorityIds)
	}
	// A new bundle is sent whole.
	nb := spiffebundle.FromX509Authorities(td, []*x509.Certificate{e.root})
	nb.SetSequenceNumber(9)
	e.cache.Apply(svidcache.Update{Bundle: nb})
	if m := recv(); !slices.Equal(m.TaintedX509AuthorityIds, []string{"ab12"}) {
		t.Fatal("the tainted set was not sent again with the bundle")
	} else if got, err := spiffebundle.Parse(td, m.Bundle); err != nil || !got.Equal(nb) {
		t.Fatalf("bundle %v", err)
	}
	// Once the entry is gone, the stream ends.
	e.cache.Apply(svidcache.Update{Deleted: []string{down.ID}})
	if _, err := s.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("after the entry's deletion: %v, want PermissionDenied", err)
	}
}
