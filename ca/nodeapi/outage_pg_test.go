package nodeapi_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
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
	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/datastore/pgstore"
	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/ca/keymanager/keystore"
	"writ.dev/writ/ca/nodeapi"
	"writ.dev/writ/internal/pgtest"
)

// pgServer is one node API server on a PostgreSQL datastore shared with
// others.
type pgServer struct {
	store *pgstore.Store
	svc   *nodeapi.Service
	addr  string
}

// newPGServer starts the node API of server serverID on its own handle
// to the database dsn, with its own CA key.
func newPGServer(t *testing.T, dsn, serverID string, clk *fakeclock.Clock) *pgServer {
	t.Helper()
	log := slog.New(newLogRecorder(t, false)).With("server", serverID)
	st, err := pgstore.Open(t.Context(), pgstore.Config{ConnString: dsn, Logger: log})
	if err != nil {
		t.Fatalf("open datastore: %v", err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("close datastore: %v", err)
		}
	})
	ks, err := keystore.NewDisk(filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	km, err := keymanager.New(t.Context(), keymanager.Config{
		ServerID: serverID, KeyStore: ks, TrustDomain: td, KeyType: "ec-p256",
		CATTL: 24 * time.Hour, Store: st, Clock: clk, Logger: log,
	})
	if err != nil {
		t.Fatalf("key manager: %v", err)
	}
	svc, err := nodeapi.New(nodeapi.Config{TrustDomain: td, Store: st, KeyManager: km, Clock: clk, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-runDone; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-svc.Ready():
	case err := <-runDone:
		t.Fatalf("Run returned before ready: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("service not ready after 10s")
	}
	srv := grpc.NewServer(svc.ServerOptions()...)
	svc.Register(srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("Serve: %v", err)
		}
	})
	return &pgServer{store: st, svc: svc, addr: lis.Addr().String()}
}

// pgClient connects to addr presenting cert (none if nil) and verifying
// the server under roots at clk's time.
func pgClient(t *testing.T, addr string, roots *spiffebundle.Bundle, clk *fakeclock.Clock, cert *tls.Certificate) nodev1.NodeServiceClient {
	t.Helper()
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // verified below as an X.509-SVID
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			id, _, err := x509svid.ParseAndVerify(raw, roots, x509svid.WithTime(clk.Now()))
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
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return nodev1.NewNodeServiceClient(conn)
}

// probe makes an authenticated call that needs nothing from the
// datastore.
func probe(ctx context.Context, c nodev1.NodeServiceClient) error {
	_, err := c.BatchSignX509SVID(ctx, &nodev1.BatchSignX509SVIDRequest{})
	return err
}

// TestAgentRenewalSurvivesDatastoreOutage: with PostgreSQL stopped, an
// agent renews its SVID at server A, fails over to server B with the new
// SVID and renews there too; a banned agent is refused throughout. Once
// PostgreSQL is back, the agent's next call records its newest SVID, the
// SVIDs it rotated away stop authenticating, and a ban made then refuses
// it at both servers.
func TestAgentRenewalSurvivesDatastoreOutage(t *testing.T) {
	cluster := pgtest.New(t)
	dsn := cluster.NewDatabase(t)
	clk := fakeclock.New(testStart())
	a := newPGServer(t, dsn, "server-a", clk)
	b := newPGServer(t, dsn, "server-b", clk)
	ctx := ctxT(t)

	// Both servers' CAs are in the bundle before either signs.
	var roots *spiffebundle.Bundle
	eventually(t, "bundle with both CAs", func() bool {
		bn, err := a.store.FetchBundle(ctx, td)
		if err != nil {
			t.Fatal(err)
		}
		roots = bn
		return len(bn.X509Authorities()) == 2
	})

	attest := func(id string) *agent {
		t.Helper()
		tok := jointoken.New()
		now := clk.Now()
		err := a.store.CreateJoinToken(ctx, &datastore.JoinToken{Hash: jointoken.Hash(tok), SPIFFEID: spiffeid.RequireFromString(id), ExpiresAt: now.Add(time.Hour), CreatedAt: now})
		if err != nil {
			t.Fatal(err)
		}
		ag := &agent{id: spiffeid.RequireFromString(id), key: newKey(t)}
		resp, err := pgClient(t, a.addr, roots, clk, nil).Attest(ctx, &nodev1.AttestRequest{JoinToken: tok, Csr: newCSR(t, ag.key)})
		if err != nil {
			t.Fatalf("Attest %s: %v", id, err)
		}
		ag.setSVID(t, resp.SvidChain)
		return ag
	}
	good := attest("spiffe://example.org/writ/agent/good")
	banned := attest("spiffe://example.org/writ/agent/banned")
	setBanned := func(id spiffeid.ID) {
		t.Helper()
		if _, err := a.store.UpdateAgent(ctx, id, func(r *datastore.Agent) error { r.Banned = true; r.UpdatedAt = clk.Now(); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	setBanned(banned.id)
	// Each server knows of the ban and of A's CA before the outage.
	for _, s := range []*pgServer{a, b} {
		eventually(t, "ban seen", func() bool {
			return status.Code(probe(ctx, pgClient(t, s.addr, roots, clk, banned.cert))) == codes.PermissionDenied
		})
		if err := probe(ctx, pgClient(t, s.addr, roots, clk, good.cert)); err != nil {
			t.Fatalf("agent at %s before the outage: %v", s.addr, err)
		}
	}
	attested := good.serial()

	cluster.Stop(t)
	// Past the agent's renewal time (half its life).
	clk.Advance(40 * time.Minute)

	renew := func(s *pgServer, ag *agent) ([][]byte, error) {
		resp, err := pgClient(t, s.addr, roots, clk, ag.cert).RenewAgent(ctx, &nodev1.RenewAgentRequest{Csr: newCSR(t, ag.key)})
		return resp.GetSvidChain(), err
	}
	chain, err := renew(a, good)
	if err != nil {
		t.Fatalf("RenewAgent at A with PostgreSQL stopped: %v", err)
	}
	good.setSVID(t, chain)
	// The agent fails over to B, which cannot read the new serial.
	if err := probe(ctx, pgClient(t, b.addr, roots, clk, good.cert)); err != nil {
		t.Fatalf("SVID renewed at A, at B with PostgreSQL stopped: %v", err)
	}
	clk.Advance(time.Minute)
	oldAtA := good.cert
	if chain, err = renew(b, good); err != nil {
		t.Fatalf("RenewAgent at B with PostgreSQL stopped: %v", err)
	}
	good.setSVID(t, chain)
	if err := probe(ctx, pgClient(t, a.addr, roots, clk, good.cert)); err != nil {
		t.Fatalf("SVID renewed at B, at A with PostgreSQL stopped: %v", err)
	}
	// The banned agent renews nowhere.
	for _, s := range []*pgServer{a, b} {
		_, err := renew(s, banned)
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("banned agent's RenewAgent with PostgreSQL stopped: %v, want PermissionDenied", err)
		}
	}
	// The datastore refuses writes meanwhile: the record is unchanged.
	if _, err := a.store.FetchAgent(ctx, good.id); !errors.Is(err, datastore.ErrUnavailable) {
		t.Fatalf("FetchAgent with PostgreSQL stopped: %v, want ErrUnavailable", err)
	}

	cluster.Start(t)
	// The agent's calls keep working while the servers reconnect, and A
	// records the newest SVID, which B signed: nothing B kept (B might
	// have crashed) is needed.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := probe(ctx, pgClient(t, a.addr, roots, clk, good.cert)); err != nil {
			t.Fatalf("agent at A as PostgreSQL comes back: %v", err)
		}
		r, err := a.store.FetchAgent(ctx, good.id)
		if err == nil && r.SerialNumber == good.serial() {
			if r.PrevSerialNumber != attested {
				t.Errorf("recorded previous serial %s, want the attested SVID's %s", r.PrevSerialNumber, attested)
			}
			if !r.CertNotAfter.Equal(good.leaf.NotAfter) {
				t.Errorf("recorded NotAfter %s, want %s", r.CertNotAfter, good.leaf.NotAfter)
			}
			break
		}
		if err != nil && !errors.Is(err, datastore.ErrUnavailable) {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent record does not name the SVID renewed during the outage (serial %s) 30s after PostgreSQL came back", good.serial())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The SVID A signed during the outage was rotated away by B's.
	for _, s := range []*pgServer{a, b} {
		eventually(t, "SVID rotated away during the outage refused", func() bool {
			return status.Code(probe(ctx, pgClient(t, s.addr, roots, clk, oldAtA))) == codes.PermissionDenied
		})
	}
	// A normal renewal with the datastore up records as before.
	clk.Advance(time.Minute)
	if chain, err = renew(a, good); err != nil {
		t.Fatalf("RenewAgent after the outage: %v", err)
	}
	prev := good.serial()
	good.setSVID(t, chain)
	r, err := a.store.FetchAgent(ctx, good.id)
	if err != nil {
		t.Fatal(err)
	}
	if r.SerialNumber != good.serial() || r.PrevSerialNumber != prev {
		t.Fatalf("record after renewal names %s/%s, want %s/%s", r.SerialNumber, r.PrevSerialNumber, good.serial(), prev)
	}
	// A ban now refuses the agent at both servers.
	setBanned(good.id)
	for _, s := range []*pgServer{a, b} {
		eventually(t, "agent banned after the outage refused", func() bool {
			err := probe(ctx, pgClient(t, s.addr, roots, clk, good.cert))
			return status.Code(err) == codes.PermissionDenied
		})
		if _, err := renew(s, good); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("banned agent's RenewAgent: %v, want PermissionDenied", err)
		}
	}
}

// TestOutageRenewalBounded: a server cut off from the datastore renews
// agents, and accepts the SVIDs it renewed, only while its last read of
// the agent records is at most an agent SVID TTL old, so that a ban
// made meanwhile where the datastore answers applies within a bounded
// time. Beyond that both are refused as Unavailable.
func TestOutageRenewalBounded(t *testing.T) {
	cluster := pgtest.New(t)
	dsn := cluster.NewDatabase(t)
	clk := fakeclock.New(testStart())
	s := newPGServer(t, dsn, "server-a", clk)
	ctx := ctxT(t)
	var roots *spiffebundle.Bundle
	eventually(t, "bundle with the CA", func() bool {
		bn, err := s.store.FetchBundle(ctx, td)
		if err != nil {
			t.Fatal(err)
		}
		roots = bn
		return len(bn.X509Authorities()) == 1
	})
	tok := jointoken.New()
	id := spiffeid.RequireFromString("spiffe://example.org/writ/agent/n1")
	if err := s.store.CreateJoinToken(ctx, &datastore.JoinToken{Hash: jointoken.Hash(tok), SPIFFEID: id, ExpiresAt: clk.Now().Add(time.Hour), CreatedAt: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	ag := &agent{id: id, key: newKey(t)}
	resp, err := pgClient(t, s.addr, roots, clk, nil).Attest(ctx, &nodev1.AttestRequest{JoinToken: tok, Csr: newCSR(t, ag.key)})
	if err != nil {
		t.Fatal(err)
	}
	ag.setSVID(t, resp.SvidChain)
	// The server has read the agent's record.
	eventually(t, "agent authenticates", func() bool { return probe(ctx, pgClient(t, s.addr, roots, clk, ag.cert)) == nil })
	renew := func() ([][]byte, error) {
		resp, err := pgClient(t, s.addr, roots, clk, ag.cert).RenewAgent(ctx, &nodev1.RenewAgentRequest{Csr: newCSR(t, ag.key)})
		return resp.GetSvidChain(), err
	}

	cluster.Stop(t)
	// Within the bound (the agent SVID TTL, an hour): renewed.
	clk.Advance(40 * time.Minute)
	chain, err := renew()
	if err != nil {
		t.Fatalf("RenewAgent 40 minutes after the last read: %v", err)
	}
	ag.setSVID(t, chain)
	if err := probe(ctx, pgClient(t, s.addr, roots, clk, ag.cert)); err != nil {
		t.Fatalf("unrecorded SVID 40 minutes after the last read: %v", err)
	}
	// Past it: the unrecorded SVID, still valid, is no longer judged,
	// and nothing is renewed.
	clk.Advance(21 * time.Minute)
	if err := probe(ctx, pgClient(t, s.addr, roots, clk, ag.cert)); status.Code(err) != codes.Unavailable {
		t.Fatalf("unrecorded SVID 61 minutes after the last read: %v, want Unavailable", err)
	}
	if _, err := renew(); status.Code(err) != codes.Unavailable {
		t.Fatalf("RenewAgent 61 minutes after the last read: %v, want Unavailable", err)
	}
	// (The database is dropped at cleanup.)
	cluster.Start(t)
}
