package nodeclient_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"writ.dev/writ/agent/internal/fakenode"
	"writ.dev/writ/agent/nodeclient"
	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/x509ca"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func setup(t *testing.T, opts fakenode.Options) (*fakenode.Server, *fakeclock.Clock) {
	clk := fakeclock.New(time.Now().Truncate(time.Second))
	opts.Clock = clk
	opts.TrustDomain = td
	return fakenode.Start(t, opts), clk
}

func newClient(t *testing.T, srv *fakenode.Server, clk *fakeclock.Clock, mod func(*nodeclient.Config)) *nodeclient.Client {
	cfg := nodeclient.Config{
		Address:     srv.Address(),
		TrustDomain: td,
		Authorities: func() []*x509.Certificate { return []*x509.Certificate{srv.CA()} },
		Clock:       clk,
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := nodeclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// attestedClient attests an agent at a new fake server and returns a
// client holding its certificate, and the one entry the server sends it.
func attestedClient(t *testing.T) (*fakenode.Server, *nodeclient.Client, *nodev1.Entry) {
	srv, clk := setup(t, fakenode.Options{})
	key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	req, err := x509.CreateCertificateRequest(nil, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	res, err := newClient(t, srv, clk, nil).Attest(t.Context(), srv.AddJoinToken(), req)
	if err != nil {
		t.Fatal(err)
	}
	var cert atomic.Pointer[tls.Certificate]
	cert.Store(&tls.Certificate{Certificate: res.Chain, PrivateKey: key})
	c := newClient(t, srv, clk, func(cfg *nodeclient.Config) { cfg.Certificate = &cert })
	e := srv.Entry("/w", "unix:uid:1")
	srv.SetEntries(e)
	return srv, c, e
}

func csr(t *testing.T) []byte {
	key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(nil, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestServerAuthentication(t *testing.T) {
	for _, tc := range []struct {
		name     string
		opts     fakenode.Options
		insecure bool
		ok       bool
	}{
		{"trusted server", fakenode.Options{}, false, true},
		{"foreign CA", fakenode.Options{ForeignServerCA: true}, false, false},
		{"wrong SPIFFE ID", fakenode.Options{ServerID: spiffeid.RequireFromPath(td, "/writ/other")}, false, false},
		{"an agent's ID", fakenode.Options{ServerID: spiffeid.RequireFromPath(td, "/agent/node1")}, false, false},
		{"insecure bootstrap skips the check", fakenode.Options{ForeignServerCA: true}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, clk := setup(t, tc.opts)
			c := newClient(t, srv, clk, func(cfg *nodeclient.Config) { cfg.InsecureBootstrap = tc.insecure })
			_, err := c.Attest(t.Context(), srv.AddJoinToken(), csr(t))
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, nodeclient.ErrServerNotTrusted) {
				t.Fatalf("Attest = %v, want ErrServerNotTrusted", err)
			}
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("code %v", status.Code(err))
			}
			if n := srv.Stats().Attests; n != 0 {
				t.Fatalf("server received %d Attest calls", n)
			}
		})
	}
}

func TestClientCertificateFromPointer(t *testing.T) {
	srv, clk := setup(t, fakenode.Options{})
	key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := x509.CreateCertificateRequest(nil, &x509.CertificateRequest{}, key)
	res, err := newClient(t, srv, clk, nil).Attest(t.Context(), srv.AddJoinToken(), req)
	if err != nil {
		t.Fatal(err)
	}
	var cert atomic.Pointer[tls.Certificate]
	withCert := func(cfg *nodeclient.Config) { cfg.Certificate = &cert }
	// No certificate yet: refused.
	if _, err := newClient(t, srv, clk, withCert).RenewAgent(t.Context(), csr(t)); !errors.Is(err, nodeclient.ErrPermissionDenied) {
		t.Fatalf("without certificate: %v", err)
	}
	cert.Store(&tls.Certificate{Certificate: res.Chain, PrivateKey: key})
	if _, err := newClient(t, srv, clk, withCert).RenewAgent(t.Context(), csr(t)); err != nil {
		t.Fatalf("with certificate: %v", err)
	}
	srv.Evict(true)
	if _, err := newClient(t, srv, clk, withCert).RenewAgent(t.Context(), csr(t)); !errors.Is(err, nodeclient.ErrPermissionDenied) || status.Code(err) != codes.PermissionDenied {
		t.Fatalf("evicted: %v", err)
	}
}

func TestSignJWTFailsFast(t *testing.T) {
	// A server that accepts connections and never answers.
	blackhole, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer blackhole.Close()
	go func() {
		for {
			c, err := blackhole.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	// A port nobody listens on.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	srv, clk := setup(t, fakenode.Options{})
	for _, tc := range []struct {
		name string
		addr string
	}{
		{"unresponsive server", blackhole.Addr().String()},
		{"nobody listening", closedAddr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, srv, clk, func(cfg *nodeclient.Config) { cfg.Address = tc.addr })
			start := time.Now()
			_, _, err := c.SignJWT(t.Context(), "e", []string{"a"})
			elapsed := time.Since(start)
			t.Logf("SignJWT failed in %v: %v", elapsed, err)
			if !errors.Is(err, nodeclient.ErrUnavailable) || status.Code(err) != codes.Unavailable {
				t.Fatalf("SignJWT = %v", err)
			}
			if elapsed >= time.Second {
				t.Fatalf("SignJWT took %v", elapsed)
			}
		})
	}
}

func TestBatchSignResults(t *testing.T) {
	srv, c, e := attestedClient(t)
	out, err := c.BatchSign(t.Context(), []nodeclient.SignRequest{{EntryID: e.Id, CSR: csr(t)}, {EntryID: "missing", CSR: csr(t)}})
	if err != nil {
		t.Fatal(err)
	}
	if out[0].Err != nil || len(out[0].Chain) != 1 {
		t.Fatalf("result 0: %+v", out[0])
	}
	if status.Code(out[1].Err) != codes.NotFound {
		t.Fatalf("result 1: %v", out[1].Err)
	}
	srv.Stop()
	start := time.Now()
	_, err = c.BatchSign(t.Context(), []nodeclient.SignRequest{{EntryID: e.Id, CSR: csr(t)}})
	if !errors.Is(err, nodeclient.ErrUnavailable) || time.Since(start) > nodeclient.SignTimeout+time.Second {
		t.Fatalf("server down: %v after %v", err, time.Since(start))
	}
}

// A call that Close cuts short, or that is made after Close, fails with
// ErrClosed and ErrUnavailable, not with gRPC's Canceled "the client
// connection is closing".
func TestCallsOnClosedClient(t *testing.T) {
	srv, c, e := attestedClient(t)

	srv.HoldJWT(true)
	defer srv.HoldJWT(false)
	done := make(chan error, 1)
	go func() {
		_, _, err := c.SignJWT(t.Context(), e.Id, []string{"a"})
		done <- err
	}()
	for deadline := time.Now().Add(10 * time.Second); srv.Stats().JWTHeld == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the call did not reach the server")
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, nodeclient.ErrClosed) || !errors.Is(err, nodeclient.ErrUnavailable) || status.Code(err) != codes.Unavailable {
			t.Errorf("%s: %v", what, err)
		}
	}
	check("call in flight", <-done)
	_, _, err := c.SignJWT(t.Context(), e.Id, []string{"a"})
	check("call after Close", err)
	_, err = c.BatchSignJWT(t.Context(), []nodeclient.JWTRequest{{EntryID: e.Id, Audience: []string{"a"}}})
	check("batch after Close", err)
}

// TestLocalAddr: a client given a local address connects from it.
func TestLocalAddr(t *testing.T) {
	srv, clk := setup(t, fakenode.Options{})
	from := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 42)}
	c := newClient(t, srv, clk, func(cfg *nodeclient.Config) { cfg.LocalAddr = from })
	if _, err := c.Attest(t.Context(), srv.AddJoinToken(), csr(t)); err != nil {
		t.Fatal(err)
	}
	host, _, err := net.SplitHostPort(srv.Stats().LastPeer)
	if err != nil || host != "127.0.0.42" {
		t.Fatalf("server saw the connection from %q (%v), want 127.0.0.42", srv.Stats().LastPeer, err)
	}
}

// TestBusyOnlyWithRetryInfo: a refusal for load (ResourceExhausted with
// RetryInfo) is ErrBusy, worth retrying; a ResourceExhausted without it,
// such as a request over the server's size limit, is not.
func TestBusyOnlyWithRetryInfo(t *testing.T) {
	srv, clk := setup(t, fakenode.Options{})
	c := newClient(t, srv, clk, nil)
	key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	req, err := x509.CreateCertificateRequest(nil, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	srv.RefuseAttests(1)
	if _, err := c.Attest(t.Context(), srv.AddJoinToken(), req); !errors.Is(err, nodeclient.ErrBusy) || status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("refused for load: %v, want ErrBusy", err)
	}
	_, err = c.Attest(t.Context(), strings.Repeat("t", 5<<20), req) // over gRPC's 4 MiB
	if status.Code(err) != codes.ResourceExhausted || errors.Is(err, nodeclient.ErrBusy) {
		t.Fatalf("oversized request: %v, want ResourceExhausted and not ErrBusy", err)
	}
}
