package admin_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"writ.dev/writ/ca/admin"
	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/internal/logkey"
	"writ.dev/writ/internal/testca"
)

const (
	opsID    = "spiffe://example.org/ops/alice"
	webID    = "spiffe://example.org/web"
	listedID = "spiffe://example.org/ci/deploy"
)

// fakeTrust is an admin.TrustSource whose bundle and tainted CAs the
// test sets.
type fakeTrust struct {
	mu      sync.Mutex // guards bundle, tainted
	bundle  *spiffebundle.Bundle
	tainted []string
}

func (f *fakeTrust) LocalX509Trust() (*spiffebundle.Bundle, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bundle, f.tainted
}

func (f *fakeTrust) set(roots []*x509.Certificate, tainted ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bundle = spiffebundle.FromX509Authorities(td, roots)
	f.tainted = tainted
}

// remoteEnv is an admin API served over mTLS on loopback TCP, with the
// trust domain's CA, the entries' store and the clock under the test's
// control.
type remoteEnv struct {
	store testStore
	clock *fakeclock.Clock
	logs  *logRecorder
	trust *fakeTrust
	ca    *testca.CA
	addr  string
	// unlistedCalled is set if the handler of unlistedMethod ran.
	unlistedCalled atomic.Bool
}

type remoteOptions struct {
	wrap func(admin.Store) admin.Store
	// quiet keeps the logs out of the test output (benchmarks).
	quiet bool
}

func newRemoteEnv(t testing.TB, opts remoteOptions) *remoteEnv {
	t.Helper()
	// Real time, so that the clients' go-spiffe verifier (which reads the
	// system clock) accepts the server's certificate.
	now := time.Now()
	e := &remoteEnv{
		store: newStore(t),
		clock: fakeclock.New(now),
		logs:  &logRecorder{t: t, quiet: opts.quiet},
		trust: &fakeTrust{},
		ca:    testca.New(t, td, now, 24*time.Hour),
	}
	e.trust.set([]*x509.Certificate{e.ca.Cert})
	var store admin.Store = e.store
	if opts.wrap != nil {
		store = opts.wrap(store)
	}
	svc, err := admin.New(admin.Config{
		TrustDomain: td,
		Store:       store,
		Clock:       e.clock,
		Logger:      slog.New(e.logs),
		Trust:       e.trust,
		AdminIDs:    []spiffeid.ID{spiffeid.RequireFromString(listedID)},
	})
	if err != nil {
		t.Fatal(err)
	}
	serverCert := e.ca.SVID(t, admin.ServerID(td), now, time.Hour).TLSCertificate()
	srv := grpc.NewServer(svc.RemoteServerOptions(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return serverCert, nil })...)
	svc.Register(srv)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	srv.RegisterService(unlistedDesc(&e.unlistedCalled), struct{}{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = l.Addr().String()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return e
}

// addEntry stores an entry for id, admin or not, and returns its ID.
func (e *remoteEnv) addEntry(t testing.TB, id string, isAdmin bool) string {
	t.Helper()
	en := &entry.Entry{
		ID:        entry.NewID(),
		SPIFFEID:  spiffeid.RequireFromString(id),
		ParentID:  spiffeid.RequireFromString(agentID),
		Selectors: []entry.Selector{{Type: "unix", Value: "uid:1000"}},
		Admin:     isAdmin,
	}
	res, err := e.store.CreateEntries(context.Background(), []*entry.Entry{en})
	if err != nil || res[0].Err != nil {
		t.Fatalf("create entry: %v %v", err, res)
	}
	return en.ID
}

// dial returns a client connection presenting cert (none if nil) and
// requiring the server's X.509-SVID under the test CA.
func (e *remoteEnv) dial(t testing.TB, cert *tls.Certificate) *grpc.ClientConn {
	t.Helper()
	conf := &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The server is verified by go-spiffe below, as the CLI does.
		InsecureSkipVerify:    true, //nolint:gosec // verified by VerifyPeerCertificate
		VerifyPeerCertificate: tlsconfig.VerifyPeerCertificate(e.ca.Bundle(), tlsconfig.AuthorizeID(admin.ServerID(td))),
	}
	if cert != nil {
		conf.Certificates = []tls.Certificate{*cert}
	}
	conn, err := grpc.NewClient("passthrough:///"+e.addr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// svidConn returns a connection presenting a fresh X.509-SVID for id
// signed by ca.
func (e *remoteEnv) svidConn(t testing.TB, ca *testca.CA, id string) *grpc.ClientConn {
	t.Helper()
	return e.dial(t, ca.SVID(t, spiffeid.RequireFromString(id), e.clock.Now(), time.Hour).TLSCertificate())
}

func listEntries(ctx context.Context, conn *grpc.ClientConn) error {
	stream, err := adminv1.NewEntryServiceClient(conn).ListEntries(ctx, &adminv1.ListEntriesRequest{})
	if err != nil {
		return err
	}
	for {
		if _, err := stream.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

func createEntry(ctx context.Context, conn *grpc.ClientConn, id string) error {
	resp, err := adminv1.NewEntryServiceClient(conn).BatchCreateEntry(ctx, &adminv1.BatchCreateEntryRequest{Entries: []*adminv1.Entry{{
		SpiffeId:  id,
		ParentId:  agentID,
		Selectors: []string{"unix:uid:1001"},
	}}})
	if err != nil {
		return err
	}
	if c := codes.Code(resp.Results[0].GetStatus().GetCode()); c != codes.OK {
		return status.Error(c, resp.Results[0].GetStatus().GetMessage())
	}
	return nil
}

func wantCode(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("%s: %v, want %s", what, err, want)
	}
}

// TestRemoteAdminAuthorization checks who may call the admin API over
// mTLS: the SPIFFE IDs of entries with Admin set and the listed IDs, and
// no one else, with no detail sent to those refused.
func TestRemoteAdminAuthorization(t *testing.T) {
	e := newRemoteEnv(t, remoteOptions{})
	e.addEntry(t, opsID, true)
	e.addEntry(t, webID, false)
	ctx := ctxT(t)
	otherTD := spiffeid.RequireTrustDomainFromString("other.test")
	otherCA := testca.New(t, otherTD, e.clock.Now(), time.Hour)
	rogueCA := testca.New(t, td, e.clock.Now(), time.Hour)

	tests := []struct {
		name string
		conn func() *grpc.ClientConn
		// want is the code of a list and of a create; handshake refusals
		// are Unavailable.
		want codes.Code
		msg  string
	}{
		{name: "admin entry", conn: func() *grpc.ClientConn { return e.svidConn(t, e.ca, opsID) }, want: codes.OK},
		{name: "listed admin ID without entry", conn: func() *grpc.ClientConn { return e.svidConn(t, e.ca, listedID) }, want: codes.OK},
		{name: "ordinary entry", conn: func() *grpc.ClientConn { return e.svidConn(t, e.ca, webID) }, want: codes.PermissionDenied, msg: "permission denied"},
		{name: "no entry", conn: func() *grpc.ClientConn { return e.svidConn(t, e.ca, "spiffe://example.org/nobody") }, want: codes.PermissionDenied, msg: "permission denied"},
		{name: "admin ID from a CA not in the bundle", conn: func() *grpc.ClientConn { return e.svidConn(t, rogueCA, opsID) }, want: codes.Unavailable},
		{name: "other trust domain", conn: func() *grpc.ClientConn { return e.svidConn(t, otherCA, "spiffe://other.test/ops/alice") }, want: codes.Unavailable},
		{name: "no client certificate", conn: func() *grpc.ClientConn { return e.dial(t, nil) }, want: codes.Unavailable},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := tt.conn()
			err := listEntries(ctx, conn)
			wantCode(t, "ListEntries", err, tt.want)
			if tt.msg != "" && status.Convert(err).Message() != tt.msg {
				t.Errorf("ListEntries message %q, want %q", status.Convert(err).Message(), tt.msg)
			}
			err = createEntry(ctx, conn, "spiffe://example.org/created/"+string(rune('a'+i)))
			wantCode(t, "BatchCreateEntry", err, tt.want)
		})
	}

	// The audit log names the remote caller by its SPIFFE ID.
	var sawOK, sawDenied bool
	for _, rec := range e.logs.audit(adminv1.EntryService_BatchCreateEntry_FullMethodName) {
		caller := rec.attrs[logkey.CallerID].String()
		switch rec.attrs[logkey.Code].String() {
		case "OK":
			sawOK = sawOK || caller == opsID
		case "PermissionDenied":
			sawDenied = sawDenied || caller == webID
		}
		if _, ok := rec.attrs[logkey.UID]; ok {
			t.Errorf("remote audit record has a uid: %s", rec.text)
		}
	}
	if !sawOK || !sawDenied {
		t.Errorf("audit log lacks the remote callers (ok %v, denied %v)", sawOK, sawDenied)
	}
}

// TestRemoteAdminUnlistedMethodDenied checks that an admin is refused a
// method without an access policy, and its handler never runs.
func TestRemoteAdminUnlistedMethodDenied(t *testing.T) {
	e := newRemoteEnv(t, remoteOptions{})
	e.addEntry(t, opsID, true)
	err := e.svidConn(t, e.ca, opsID).Invoke(ctxT(t), unlistedMethod, &emptypb.Empty{}, &emptypb.Empty{})
	wantCode(t, "unlisted method", err, codes.PermissionDenied)
	if e.unlistedCalled.Load() {
		t.Error("the handler of a method without a policy ran")
	}
}

// TestRemoteAdminMessageLimit checks that the remote listener bounds
// requests as the admin socket does.
func TestRemoteAdminMessageLimit(t *testing.T) {
	e := newRemoteEnv(t, remoteOptions{})
	e.addEntry(t, opsID, true)
	conn := e.svidConn(t, e.ca, opsID)
	big := &adminv1.BatchCreateEntryRequest{Entries: []*adminv1.Entry{{
		SpiffeId: webID, ParentId: agentID, Selectors: []string{"unix:path:/" + strings.Repeat("a", admin.RecommendedMaxRecvMsgSize)},
	}}}
	_, err := adminv1.NewEntryServiceClient(conn).BatchCreateEntry(ctxT(t), big)
	wantCode(t, "oversized request", err, codes.ResourceExhausted)
	wantCode(t, "next call", listEntries(ctxT(t), conn), codes.OK)
}

// TestRemoteAdminRevokedAtOnce checks that deleting the admin entry, or
// clearing its Admin flag, refuses the very next call on a connection
// that was allowed.
func TestRemoteAdminRevokedAtOnce(t *testing.T) {
	for _, tt := range []struct {
		name   string
		revoke func(t *testing.T, e *remoteEnv, id string)
	}{
		{name: "delete", revoke: func(t *testing.T, e *remoteEnv, id string) {
			if _, err := e.store.DeleteEntry(ctxT(t), id); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "clear admin", revoke: func(t *testing.T, e *remoteEnv, id string) {
			if _, err := e.store.UpdateEntry(ctxT(t), id, func(en *entry.Entry) error { en.Admin = false; return nil }); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newRemoteEnv(t, remoteOptions{})
			id := e.addEntry(t, opsID, true)
			conn := e.svidConn(t, e.ca, opsID)
			wantCode(t, "before", listEntries(ctxT(t), conn), codes.OK)
			tt.revoke(t, e, id)
			wantCode(t, "after", listEntries(ctxT(t), conn), codes.PermissionDenied)
		})
	}
}

// TestRemoteAdminTrustChanges checks that the client certificate is
// verified again on each call of an open connection: against the bundle
// of the moment, its tainted CAs and the time.
func TestRemoteAdminTrustChanges(t *testing.T) {
	for _, tt := range []struct {
		name   string
		change func(e *remoteEnv)
	}{
		{name: "CA tainted", change: func(e *remoteEnv) {
			e.trust.set([]*x509.Certificate{e.ca.Cert}, hex.EncodeToString(e.ca.Cert.SubjectKeyId))
		}},
		{name: "CA gone from the bundle", change: func(e *remoteEnv) {
			e.trust.set([]*x509.Certificate{testca.New(t, td, e.clock.Now(), time.Hour).Cert})
		}},
		{name: "SVID expired", change: func(e *remoteEnv) { e.clock.Advance(2 * time.Hour) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newRemoteEnv(t, remoteOptions{})
			e.addEntry(t, opsID, true)
			conn := e.svidConn(t, e.ca, opsID)
			wantCode(t, "before", listEntries(ctxT(t), conn), codes.OK)
			tt.change(e)
			err := listEntries(ctxT(t), conn)
			wantCode(t, "after", err, codes.Unauthenticated)
			if msg := status.Convert(err).Message(); msg != "unauthenticated" {
				t.Errorf("message %q leaks detail", msg)
			}
		})
	}
}

// TestRemoteAdminTaintedIntermediate checks that an SVID signed by an
// intermediate CA (an upstream's) is refused once that intermediate is
// tainted, though the root is not.
func TestRemoteAdminTaintedIntermediate(t *testing.T) {
	e := newRemoteEnv(t, remoteOptions{})
	e.addEntry(t, opsID, true)
	inter := e.ca.Intermediate(t, e.clock.Now(), time.Hour)
	conn := e.svidConn(t, inter, opsID)
	wantCode(t, "before", listEntries(ctxT(t), conn), codes.OK)
	e.trust.set([]*x509.Certificate{e.ca.Cert}, hex.EncodeToString(inter.Cert.SubjectKeyId))
	wantCode(t, "after", listEntries(ctxT(t), conn), codes.Unauthenticated)
}

// TestRemoteAdminLocalOnly checks that a remote admin cannot take a
// backup (it holds the CA's private keys) and that the refusal is
// audited.
func TestRemoteAdminLocalOnly(t *testing.T) {
	e := newRemoteEnv(t, remoteOptions{})
	e.addEntry(t, opsID, true)
	conn := e.svidConn(t, e.ca, opsID)
	stream, err := adminv1.NewServerServiceClient(conn).Backup(ctxT(t), &adminv1.BackupRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	wantCode(t, "Backup", err, codes.PermissionDenied)
	recs := e.logs.audit(adminv1.ServerService_Backup_FullMethodName)
	if len(recs) != 1 || recs[0].attrs[logkey.CallerID].String() != opsID {
		t.Fatalf("Backup audit records: %v", recs)
	}
}

// TestRemoteAdminHealthPublic checks that any SVID of the trust domain
// may check health (no entry needed), but not a client without one.
func TestRemoteAdminHealthPublic(t *testing.T) {
	e := newRemoteEnv(t, remoteOptions{})
	_, err := healthpb.NewHealthClient(e.svidConn(t, e.ca, webID)).Check(ctxT(t), &healthpb.HealthCheckRequest{})
	wantCode(t, "Check", err, codes.OK)
	_, err = healthpb.NewHealthClient(e.dial(t, nil)).Check(ctxT(t), &healthpb.HealthCheckRequest{})
	wantCode(t, "Check without certificate", err, codes.Unavailable)
}

// failingList is a store whose ListEntries fails.
type failingList struct{ admin.Store }

var errListFailed = errors.New("list failed")

func (failingList) ListEntries(context.Context, datastore.EntryFilter) ([]*entry.Entry, error) {
	return nil, errListFailed
}

// TestRemoteAdminStoreDown checks that a caller whose entries cannot be
// read is refused (Unavailable), while a listed ID needs no read.
func TestRemoteAdminStoreDown(t *testing.T) {
	e := newRemoteEnv(t, remoteOptions{wrap: func(s admin.Store) admin.Store { return failingList{s} }})
	e.addEntry(t, opsID, true)
	err := createEntry(ctxT(t), e.svidConn(t, e.ca, opsID), webID)
	wantCode(t, "admin entry", err, codes.Unavailable)
	if strings.Contains(status.Convert(err).Message(), errListFailed.Error()) {
		t.Errorf("message leaks the store's error: %v", err)
	}
	err = createEntry(ctxT(t), e.svidConn(t, e.ca, listedID), webID)
	wantCode(t, "listed ID", err, codes.OK)
}

// TestNewRefusesBadAdminIDs checks the admin IDs New accepts: none of
// another trust domain, none without a path, and none under the path
// reserved for Writ's server and agents, whose SVIDs every agent (a
// compromised one too) and server holds without any entry.
func TestNewRefusesBadAdminIDs(t *testing.T) {
	for _, id := range []string{"spiffe://other.test/ops", "spiffe://example.org", "spiffe://example.org/writ/server",
		"spiffe://example.org/writ/agent/node1", "spiffe://example.org/writ/agent/join_token/abc", "spiffe://example.org/writ"} {
		_, err := admin.New(admin.Config{
			TrustDomain: td, Store: newStore(t), Logger: slog.New(slog.DiscardHandler),
			AdminIDs: []spiffeid.ID{spiffeid.RequireFromString(id)},
		})
		if err == nil {
			t.Errorf("New accepted admin ID %s", id)
		}
	}
}

// BenchmarkRemoteAdminCall measures one GetEntry over an open mTLS
// connection: the chain verified again and, for an admin entry, the
// caller's entries read from the store.
func BenchmarkRemoteAdminCall(b *testing.B) {
	for _, bb := range []struct {
		name, id string
	}{
		{name: "admin entry", id: opsID},
		{name: "listed ID", id: listedID},
	} {
		b.Run(bb.name, func(b *testing.B) {
			e := newRemoteEnv(b, remoteOptions{quiet: true})
			target := e.addEntry(b, webID, false)
			e.addEntry(b, opsID, true)
			client := adminv1.NewEntryServiceClient(e.svidConn(b, e.ca, bb.id))
			ctx := context.Background()
			for b.Loop() {
				if _, err := client.GetEntry(ctx, &adminv1.GetEntryRequest{Id: target}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestTemplateCannotFillAdminID: a template entry that could fill one of
// Config.AdminIDs is refused, as one that could fill the ID of an admin
// entry is: the workload it matched would get an SVID of that ID, which
// the remote admin API accepts. The same template elsewhere is accepted.
func TestTemplateCannotFillAdminID(t *testing.T) {
	e := newRemoteEnv(t, remoteOptions{})
	conn := e.svidConn(t, e.ca, listedID)
	create := func(tmpl string) (codes.Code, string) {
		resp, err := adminv1.NewEntryServiceClient(conn).BatchCreateEntry(ctxT(t), &adminv1.BatchCreateEntryRequest{Entries: []*adminv1.Entry{{
			Template:  tmpl,
			ParentId:  agentID,
			Selectors: []string{"unix:gid:100"},
		}}})
		if err != nil {
			t.Fatal(err)
		}
		return codes.Code(resp.Results[0].GetStatus().GetCode()), resp.Results[0].GetEntry().GetId()
	}
	if got, _ := create("spiffe://example.org/ci/{{unix.path | base}}"); got != codes.InvalidArgument {
		t.Fatalf("template filling the admin ID %s: %v, want InvalidArgument", listedID, got)
	}
	got, id := create("spiffe://example.org/ci/{{unix.user}}/x")
	if got != codes.OK {
		t.Fatalf("template not filling it: %v", got)
	}
	// Nor can an update turn a template into one that fills it.
	_, err := adminv1.NewEntryServiceClient(conn).UpdateEntry(ctxT(t), &adminv1.UpdateEntryRequest{
		Entry:      &adminv1.Entry{Id: id, Template: "spiffe://example.org/ci/{{unix.user}}"},
		UpdateMask: []string{"spiffe_id"},
	})
	wantCode(t, "update to a template filling the admin ID", err, codes.InvalidArgument)
}
