package authz_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/workloadapi/authz"
)

// handshakeResult is the outcome of one connection.
type handshakeResult struct {
	client, server tls.ConnectionState
	err            error // the first failure, on either side
}

// connect runs a TLS handshake between the two configs over loopback TCP
// and a one-byte exchange (so the client reads TLS 1.3 session tickets
// and sees an alert of a server that refused it).
func connect(t *testing.T, clientCfg, serverCfg *tls.Config) handshakeResult {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	type side struct {
		cs  tls.ConnectionState
		err error
	}
	srvDone := make(chan side, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			srvDone <- side{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Server(c, serverCfg)
		if err := tc.Handshake(); err != nil {
			srvDone <- side{err: err}
			return
		}
		_, err = tc.Write([]byte{'x'})
		srvDone <- side{cs: tc.ConnectionState(), err: err}
		io.Copy(io.Discard, tc) // until the client closes
	}()
	c, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, clientCfg)
	var r handshakeResult
	if r.err = tc.Handshake(); r.err == nil {
		_, r.err = io.ReadFull(tc, make([]byte, 1))
		r.client = tc.ConnectionState()
	}
	tc.Close()
	s := <-srvDone
	r.server = s.cs
	if s.err != nil {
		r.err = errors.Join(r.err, s.err)
	}
	return r
}

// mtlsEnv: a server /api and a client /web of td, and an outsider of
// another trust domain whose CA td does not trust.
type mtlsEnv struct {
	local, other      *pki
	server, client    *source
	outsider          *source
	serverID, client1 spiffeid.ID
}

func newMTLSEnv(t *testing.T) *mtlsEnv {
	e := &mtlsEnv{local: newPKI(t, td), other: newPKI(t, otherTD)}
	e.serverID = spiffeid.RequireFromPath(td, "/api")
	e.client1 = spiffeid.RequireFromPath(td, "/web")
	e.server = newSource(e.local.svid(t, "/api", time.Hour), e.local.x509Bundle())
	e.client = newSource(e.local.svid(t, "/web", time.Hour), e.local.x509Bundle())
	// The outsider trusts td, but td does not trust it.
	e.outsider = newSource(e.other.svid(t, "/web", time.Hour), e.local.x509Bundle(), e.other.x509Bundle())
	return e
}

func withServerName(c *tls.Config) *tls.Config {
	c.ServerName = "api" // the session cache key
	return c
}

func TestMTLS(t *testing.T) {
	e := newMTLSEnv(t)
	allowWeb := authz.IDs(e.client1)
	allowAPI := authz.IDs(e.serverID)
	tests := []struct {
		name   string
		client *tls.Config
		server *tls.Config
		ok     bool
	}{
		{name: "both allowed", client: authz.ClientTLSConfig(e.client, allowAPI), server: authz.ServerTLSConfig(e.server, allowWeb), ok: true},
		{name: "prefix and trust domain policies", client: authz.ClientTLSConfig(e.client, authz.TrustDomain(td)), server: authz.ServerTLSConfig(e.server, authz.MustPathPrefix(td, "/web")), ok: true},
		{name: "server refuses the client's ID", client: authz.ClientTLSConfig(e.client, allowAPI), server: authz.ServerTLSConfig(e.server, authz.IDs(spiffeid.RequireFromPath(td, "/db")))},
		{name: "client refuses the server's ID", client: authz.ClientTLSConfig(e.client, authz.IDs(spiffeid.RequireFromPath(td, "/db"))), server: authz.ServerTLSConfig(e.server, allowWeb)},
		{name: "nil policy refuses", client: authz.ClientTLSConfig(e.client, allowAPI), server: authz.ServerTLSConfig(e.server, nil)},
		{name: "untrusted client CA", client: authz.ClientTLSConfig(e.outsider, allowAPI), server: authz.ServerTLSConfig(e.server, authz.TrustDomain(otherTD))},
		{name: "no client certificate", client: authz.ClientTLSConfigNoClientCert(e.client, allowAPI), server: authz.ServerTLSConfig(e.server, allowWeb)},
		{name: "server auth only", client: authz.ClientTLSConfigNoClientCert(e.client, allowAPI), server: authz.ServerTLSConfigNoClientCert(e.server), ok: true},
		{name: "server auth only, server refused", client: authz.ClientTLSConfigNoClientCert(e.client, authz.TrustDomain(otherTD)), server: authz.ServerTLSConfigNoClientCert(e.server)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := connect(t, tt.client, tt.server)
			if (r.err == nil) != tt.ok {
				t.Fatalf("handshake error %v, want success %v", r.err, tt.ok)
			}
			if !tt.ok {
				return
			}
			if id, err := authz.PeerID(&r.client); err != nil || id != e.serverID {
				t.Fatalf("client sees server %v, %v", id, err)
			}
			if tt.server.ClientAuth == tls.NoClientCert {
				return
			}
			if id, err := authz.PeerID(&r.server); err != nil || id != e.client1 {
				t.Fatalf("server sees client %v, %v", id, err)
			}
		})
	}
}

// TestMTLSClockAndExpiry: verification uses the injected clock; an SVID
// past its NotAfter is refused.
func TestMTLSClockAndExpiry(t *testing.T) {
	e := newMTLSEnv(t)
	clk := fakeclock.New(time.Now())
	client := authz.ClientTLSConfig(e.client, authz.IDs(e.serverID), authz.WithClock(clk))
	server := authz.ServerTLSConfig(e.server, authz.IDs(e.client1), authz.WithClock(clk))
	if r := connect(t, client, server); r.err != nil {
		t.Fatal(r.err)
	}
	clk.Advance(2 * time.Hour)
	if r := connect(t, client, server); r.err == nil {
		t.Fatal("expired SVIDs accepted")
	}
}

// TestMTLSResumedSessionsAreChecked: a session resumed after the policy
// or the bundle changed is refused like a new one. The servers share
// session ticket keys, and the clients a session cache, as replicas of a
// service and long-lived clients do.
func TestMTLSResumedSessionsAreChecked(t *testing.T) {
	e := newMTLSEnv(t)
	var ticketKey [32]byte
	copy(ticketKey[:], "authz test session ticket key...")
	server := func(p authz.Policy, src authz.X509Source) *tls.Config {
		c := authz.ServerTLSConfig(src, p)
		c.SetSessionTicketKeys([][32]byte{ticketKey})
		return c
	}
	client := func(p authz.Policy, cache tls.ClientSessionCache) *tls.Config {
		c := withServerName(authz.ClientTLSConfig(e.client, p))
		c.ClientSessionCache = cache
		return c
	}
	allowWeb, allowAPI := authz.IDs(e.client1), authz.IDs(e.serverID)
	denyAll := authz.IDs()

	t.Run("server side", func(t *testing.T) {
		cache := tls.NewLRUClientSessionCache(8)
		if r := connect(t, client(allowAPI, cache), server(allowWeb, e.server)); r.err != nil || r.client.DidResume {
			t.Fatalf("first handshake: %v (resumed %v)", r.err, r.client.DidResume)
		}
		// Control: the session does resume.
		if r := connect(t, client(allowAPI, cache), server(allowWeb, e.server)); r.err != nil || !r.server.DidResume {
			t.Fatalf("second handshake did not resume: %v", r.err)
		}
		if r := connect(t, client(allowAPI, cache), server(denyAll, e.server)); r.err == nil {
			t.Fatalf("resumed session accepted by a server that allows no one (resumed %v)", r.server.DidResume)
		}
	})
	t.Run("server side, CA removed from the bundle", func(t *testing.T) {
		cache := tls.NewLRUClientSessionCache(8)
		src := newSource(e.server.svid, e.local.x509Bundle())
		if r := connect(t, client(allowAPI, cache), server(allowWeb, src)); r.err != nil {
			t.Fatal(r.err)
		}
		if r := connect(t, client(allowAPI, cache), server(allowWeb, src)); r.err != nil || !r.server.DidResume {
			t.Fatalf("second handshake did not resume: %v", r.err)
		}
		src.bundles.Remove(td)
		if r := connect(t, client(allowAPI, cache), server(allowWeb, src)); r.err == nil {
			t.Fatal("resumed session accepted after the client's CA left the bundle")
		}
	})
	t.Run("client side", func(t *testing.T) {
		cache := tls.NewLRUClientSessionCache(8)
		if r := connect(t, client(allowAPI, cache), server(allowWeb, e.server)); r.err != nil {
			t.Fatal(r.err)
		}
		if r := connect(t, client(allowAPI, cache), server(allowWeb, e.server)); r.err != nil || !r.client.DidResume {
			t.Fatalf("second handshake did not resume: %v", r.err)
		}
		if r := connect(t, client(denyAll, cache), server(allowWeb, e.server)); r.err == nil {
			t.Fatalf("client resumed a session with a server its policy refuses (resumed %v)", r.client.DidResume)
		}
	})
	t.Run("go-spiffe's VerifyPeerCertificate alone", func(t *testing.T) {
		// Why the helpers check in VerifyConnection: Go does not call
		// VerifyPeerCertificate on resumed sessions.
		cache := tls.NewLRUClientSessionCache(8)
		plain := func(a tlsconfig.Authorizer) *tls.Config {
			c := tlsconfig.MTLSServerConfig(e.server, e.server, a)
			c.SetSessionTicketKeys([][32]byte{ticketKey})
			return c
		}
		if r := connect(t, client(allowAPI, cache), plain(tlsconfig.AuthorizeID(e.client1))); r.err != nil {
			t.Fatal(r.err)
		}
		r := connect(t, client(allowAPI, cache), plain(authz.TLSAuthorizer(denyAll)))
		t.Logf("go-spiffe server config allowing no one, resumed session: error %v, resumed %v", r.err, r.server.DidResume)
	})
}

// TestGRPCPeerID: a gRPC server with ServerTLSConfig credentials sees
// the client's SPIFFE ID.
func TestGRPCPeerID(t *testing.T) {
	e := newMTLSEnv(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan string, 1)
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(authz.ServerTLSConfig(e.server, authz.IDs(e.client1)))),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			id, err := authz.GRPCPeerID(ctx)
			if err != nil {
				return nil, err
			}
			seen <- id.String()
			return h(ctx, req)
		}),
	)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	defer func() { srv.Stop(); <-done }()

	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(authz.ClientTLSConfig(e.client, authz.IDs(e.serverID)))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if got := <-seen; got != e.client1.String() {
		t.Fatalf("GRPCPeerID = %s", got)
	}
	if _, err := authz.GRPCPeerID(context.Background()); !errors.Is(err, authz.ErrUnauthenticated) {
		t.Fatalf("GRPCPeerID without a peer: %v", err)
	}
}

var _ x509bundle.Source = (*source)(nil)
