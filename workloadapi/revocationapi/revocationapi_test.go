package revocationapi_test

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"writ.dev/writ/agent/revocation"
	"writ.dev/writ/agent/rotate"
	"writ.dev/writ/agent/svidcache"
	agentv1 "writ.dev/writ/ca/api/agent/v1"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/leakcheck"
	"writ.dev/writ/workloadapi"
	"writ.dev/writ/workloadapi/revocationapi"
	"writ.dev/writ/workloadapi/unixattest"
)

// TestMain fails the run if the tests leave goroutines behind.
func TestMain(m *testing.M) { os.Exit(leakcheck.Main(m)) }

var td = spiffeid.RequireTrustDomainFromString("example.org")

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// env is a Workload API server on a real socket, with the revocation
// service of list registered; the caller (this process) matches no entry.
type env struct {
	list *revocation.List
	addr string
	stop func()
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir, err := os.MkdirTemp("", "rv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return newEnvAt(t, filepath.Join(dir, "s"))
}

// newEnvAt is newEnv with the socket at path.
func newEnvAt(t *testing.T, path string) *env {
	t.Helper()
	log := slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509ca.NewSelfSignedCA(time.Now().Add(-time.Minute), td, key, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cache, err := svidcache.New(svidcache.Config{TrustDomain: td, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	cache.Apply(svidcache.Update{Full: true, Bundle: spiffebundle.FromX509Authorities(td, []*x509.Certificate{cert})})
	srv, err := workloadapi.New(workloadapi.Config{SocketPath: path, Cache: cache, Attestor: unixattest.New(unixattest.Config{Logger: log}), TrustDomain: td, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{list: revocation.New(nil), addr: "unix://" + path}
	svc, err := revocationapi.NewService(revocationapi.ServiceConfig{Socket: srv, List: e.list, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	svc.Register(srv)
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-runErr:
		cancel()
		t.Fatalf("Run: %v", err)
	}
	stopped := false
	e.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-runErr; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(e.stop)
	return e
}

func rev(jti string, now time.Time) revocation.Revocation {
	return revocation.Revocation{JTI: jti, RevokedAt: now, ExpiresAt: now.Add(time.Hour)}
}

// TestWatchRevocations: the stream sends the full list, then only what
// is added; the agent's stop ends it with Unavailable. No entry is
// needed, but the security header is, as on the Workload API: a call
// without it fails with InvalidArgument.
func TestWatchRevocations(t *testing.T) {
	e := newEnv(t)
	now := time.Now().Truncate(time.Second)
	e.list.Add([]revocation.Revocation{rev("a", now)})
	bare, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer bare.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	noHeader, err := agentv1.NewRevocationServiceClient(bare).WatchRevocations(ctx, &agentv1.WatchRevocationsRequest{})
	if err == nil {
		_, err = noHeader.Recv()
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("without the security header: %v, want InvalidArgument", err)
	}
	conn, err := grpc.NewClient(e.addr, append(workloadapi.SecurityHeaderDialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := agentv1.NewRevocationServiceClient(conn).WatchRevocations(ctx, &agentv1.WatchRevocationsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := stream.Recv()
	if err != nil || !m.Full || len(m.Revocations) != 1 || m.Revocations[0].Jti != "a" || m.Revocations[0].ExpiresAt != now.Add(time.Hour).Unix() {
		t.Fatalf("first message %v, %v", m, err)
	}
	e.list.Add([]revocation.Revocation{rev("b", now)})
	m, err = stream.Recv()
	if err != nil || m.Full || len(m.Revocations) != 1 || m.Revocations[0].Jti != "b" {
		t.Fatalf("second message %v, %v", m, err)
	}
	e.stop()
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("after stop: %v", err)
	}
}

// TestClient: a Client follows the stream, and keeps its list while the
// agent is away.
func TestClient(t *testing.T) {
	e := newEnv(t)
	now := time.Now().Truncate(time.Second)
	e.list.Add([]revocation.Revocation{rev("a", now)})
	c, err := revocationapi.NewClient(revocationapi.ClientConfig{Address: e.addr})
	if err != nil {
		t.Fatal(err)
	}
	sub := c.List().Subscribe()
	defer sub.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	select {
	case <-c.Ready():
	case <-time.After(20 * time.Second):
		t.Fatal("client not ready")
	}
	if !c.Revoked("a", "", "", now) || c.Revoked("b", "", "", now) {
		t.Fatal("first list not applied")
	}
	e.list.Add([]revocation.Revocation{rev("b", now)})
	deadline := time.After(20 * time.Second)
	for !c.Revoked("b", "", "", now) {
		select {
		case <-sub.C():
		case <-deadline:
			t.Fatal("addition not applied")
		}
	}
	e.stop()
	if !c.Revoked("a", "", "", now) || !c.Revoked("b", "", "", now) {
		t.Error("list lost when the agent went away")
	}
}

// TestClientReconnects: when the agent comes back, the Client connects
// again and the full list it is sent replaces its own.
func TestClientReconnects(t *testing.T) {
	e := newEnv(t)
	now := time.Now().Truncate(time.Second)
	e.list.Add([]revocation.Revocation{rev("a", now)})
	c, err := revocationapi.NewClient(revocationapi.ClientConfig{Address: e.addr, Backoff: rotate.Backoff{Base: 10 * time.Millisecond, Max: 100 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	sub := c.List().Subscribe()
	defer sub.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	select {
	case <-c.Ready():
	case <-time.After(20 * time.Second):
		t.Fatal("client not ready")
	}
	e.stop()
	e2 := newEnvAt(t, strings.TrimPrefix(e.addr, "unix://"))
	e2.list.Add([]revocation.Revocation{rev("c", now)})
	deadline := time.After(20 * time.Second)
	for !c.Revoked("c", "", "", now) {
		select {
		case <-sub.C():
		case <-deadline:
			t.Fatal("no list from the agent after it came back")
		}
	}
	if c.Revoked("a", "", "", now) {
		t.Error("the full list did not replace the old one")
	}
}

func TestNewClientAddress(t *testing.T) {
	t.Setenv(revocationapi.EndpointEnv, "tcp://127.0.0.1:1")
	if _, err := revocationapi.NewClient(revocationapi.ClientConfig{}); !errors.Is(err, revocationapi.ErrConfig) {
		t.Errorf("tcp address: %v", err)
	}
	t.Setenv(revocationapi.EndpointEnv, "unix:///tmp/x.sock")
	if _, err := revocationapi.NewClient(revocationapi.ClientConfig{}); err != nil {
		t.Errorf("from the environment: %v", err)
	}
}

// TestLongListInParts: a full list longer than MaxPerMessage goes in
// several messages, each far below the socket's 4 MiB message limit (a
// list of client revocations this long would exceed it in one), and a
// Client applies the whole list once the last part arrives.
func TestLongListInParts(t *testing.T) {
	e := newEnv(t)
	now := time.Now().Truncate(time.Second)
	n := 2*revocationapi.MaxPerMessage + 7
	rs := make([]revocation.Revocation, n)
	for i := range rs {
		id := "spiffe://example.org/" + strings.Repeat("c", 100) + "/" + strconv.Itoa(i)
		rs[i] = revocation.Revocation{ClientID: id, RevokedAt: now, ExpiresAt: now.Add(time.Hour)}
	}
	e.list.Add(rs)
	conn, err := grpc.NewClient(e.addr, append(workloadapi.SecurityHeaderDialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := agentv1.NewRevocationServiceClient(conn).WatchRevocations(ctx, &agentv1.WatchRevocationsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for i := 0; ; i++ {
		m, err := stream.Recv()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !m.Full || len(m.Revocations) > revocationapi.MaxPerMessage {
			t.Fatalf("message %d: full %v, %d revocations", i, m.Full, len(m.Revocations))
		}
		if size := proto.Size(m); size > 2<<20 {
			t.Fatalf("message %d: %d bytes", i, size)
		}
		got += len(m.Revocations)
		if !m.More {
			if i != 2 {
				t.Errorf("the list came in %d messages, want 3", i+1)
			}
			break
		}
	}
	if got != n {
		t.Fatalf("%d revocations sent, want %d", got, n)
	}

	c, err := revocationapi.NewClient(revocationapi.ClientConfig{Address: e.addr})
	if err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- c.Run(cctx) }()
	defer func() {
		ccancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	select {
	case <-c.Ready():
	case <-time.After(20 * time.Second):
		t.Fatal("client not ready")
	}
	for _, i := range []int{0, revocationapi.MaxPerMessage, n - 1} {
		if !c.Revoked("", rs[i].ClientID, "", now) {
			t.Errorf("revocation %d of the long list not applied", i)
		}
	}
}
