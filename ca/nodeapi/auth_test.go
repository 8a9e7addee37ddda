package nodeapi_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/nodeapi"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/testca"
)

const msgNotAttested = "agent is not attested"

// callAll calls every agent method with c and returns the errors by
// method. Sync's error is the one its first Recv returns.
func callAll(t *testing.T, c nodev1.NodeServiceClient, csr []byte) map[string]error {
	t.Helper()
	ctx := ctxT(t)
	errs := make(map[string]error)
	_, errs["RenewAgent"] = c.RenewAgent(ctx, &nodev1.RenewAgentRequest{Csr: csr})
	_, errs["BatchSignX509SVID"] = c.BatchSignX509SVID(ctx, &nodev1.BatchSignX509SVIDRequest{})
	_, errs["SignJWTSVID"] = c.SignJWTSVID(ctx, &nodev1.SignJWTSVIDRequest{EntryId: "x", Audience: []string{"a"}})
	_, errs["BatchSignJWTSVID"] = c.BatchSignJWTSVID(ctx, &nodev1.BatchSignJWTSVIDRequest{Requests: []*nodev1.SignJWTSVIDRequest{{EntryId: "x", Audience: []string{"a"}}}})
	stream, err := c.Sync(ctx, &nodev1.SyncRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	errs["Sync"] = err
	return errs
}

func TestNoClientCertOnlyAttest(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := e.client(nil)
	for method, err := range callAll(t, c, newCSR(t, newKey(t))) {
		t.Run(method, func(t *testing.T) { wantCode(t, err, codes.PermissionDenied, msgNotAttested) })
	}
	if _, err := c.Attest(ctxT(t), &nodev1.AttestRequest{JoinToken: e.newToken(agentA, time.Hour), Csr: newCSR(t, newKey(t))}); err != nil {
		t.Fatalf("Attest without a client certificate: %v", err)
	}
}

// foreignCA is a CA of the same trust domain that is not in the bundle.
func foreignCA(t *testing.T, now time.Time) *x509ca.Issuer {
	t.Helper()
	return testca.New(t, td, now, 24*time.Hour).Issuer()
}

// svidFrom signs an SVID for id with iss and returns it as a client
// certificate.
func svidFrom(t *testing.T, now time.Time, iss *x509ca.Issuer, id string, ttl time.Duration) *tls.Certificate {
	t.Helper()
	key := testca.NewKey(t)
	der, err := x509ca.SignX509SVID(now, iss, x509ca.SVIDParams{ID: spiffeid.RequireFromString(id), TTL: ttl, PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// TestUntrustedCertRefused: a client certificate that does not verify
// against the bundle now is refused at the handshake, so no call gets
// through, not even Attest.
func TestUntrustedCertRefused(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	active := e.km.Active().X509
	tests := []struct {
		name string
		cert func(t *testing.T) *tls.Certificate
	}{
		{name: "foreign CA", cert: func(t *testing.T) *tls.Certificate {
			return svidFrom(t, e.clock.Now(), foreignCA(t, e.clock.Now()), agentA, time.Hour)
		}},
		{name: "CA certificate as leaf", cert: func(*testing.T) *tls.Certificate {
			return &tls.Certificate{Certificate: [][]byte{active.Cert.Raw}, PrivateKey: active.Signer, Leaf: active.Cert}
		}},
		{name: "expired", cert: func(t *testing.T) *tls.Certificate {
			c := svidFrom(t, e.clock.Now(), active, agentA, time.Minute)
			e.clock.Advance(2 * time.Minute)
			return c
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := e.client(tt.cert(t))
			for method, err := range callAll(t, c, newCSR(t, a.key)) {
				if code := status.Code(err); code != codes.Unavailable && code != codes.PermissionDenied {
					t.Errorf("%s: %v, want the connection refused", method, err)
				}
			}
			_, err := c.Attest(ctxT(t), &nodev1.AttestRequest{JoinToken: "x", Csr: newCSR(t, a.key)})
			if code := status.Code(err); code != codes.Unavailable {
				t.Errorf("Attest over a refused handshake: %v, want Unavailable", err)
			}
		})
	}
}

// TestWorkloadSVIDCannotActAsAgent: an entry whose SPIFFE ID is an
// agent's (stored by going around the admin API, which refuses IDs under
// /writ/) gets no SVID, so no workload can hold the agent's identity.
func TestWorkloadSVIDCannotActAsAgent(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	b := e.attest(agentB)
	// Agent b registers (as if compromised) a workload with a's ID.
	en := e.createEntry(agentA, agentB, nil)
	key := newKey(t)
	resp, err := b.client.BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{Requests: []*nodev1.X509SVIDRequest{{EntryId: en.ID, Csr: newCSR(t, key)}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := codes.Code(resp.Results[0].GetStatus().GetCode()); got != codes.PermissionDenied || len(resp.Results[0].SvidChain) != 0 {
		t.Fatalf("BatchSign for an entry with an agent's ID: %v, want PermissionDenied and no SVID", resp.Results[0])
	}
	// The real agent is unaffected.
	if _, err := a.client.BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{}); err != nil {
		t.Errorf("real agent: %v", err)
	}
	if rec := e.fetchAgent(a.id); rec.SerialNumber != a.serial() {
		t.Errorf("agent record changed: %+v", rec)
	}
}

// TestEvictOrBanEndsAgent: eviction or a ban closes the agent's open Sync
// stream at once, and its next call is refused.
func TestEvictOrBanEndsAgent(t *testing.T) {
	tests := []struct {
		name   string
		revoke func(e *env, a *agent)
		msg    string
	}{
		{name: "evict", msg: msgNotAttested, revoke: func(e *env, a *agent) {
			if _, err := e.store.DeleteAgent(context.Background(), a.id); err != nil {
				e.t.Fatal(err)
			}
		}},
		{name: "ban", msg: "agent is banned", revoke: func(e *env, a *agent) { e.setBanned(a.id, true) }},
		{name: "CA removed", msg: msgNotAttested, revoke: func(e *env, a *agent) {
			ca := e.km.Active().X509.Cert
			_, err := e.store.UpdateBundle(context.Background(), td, func(b *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
				b = b.Clone()
				b.RemoveX509Authority(ca)
				return b, nil
			})
			if err != nil {
				e.t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, envOptions{})
			a := e.attest(agentA)
			other := e.attest(agentB)
			stream, err := a.client.Sync(ctxT(t), &nodev1.SyncRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := stream.Recv(); err != nil {
				t.Fatal(err)
			}
			otherStream, err := other.client.Sync(ctxT(t), &nodev1.SyncRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := otherStream.Recv(); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			tt.revoke(e, a)
			_, err = stream.Recv()
			wantCode(t, err, codes.PermissionDenied, tt.msg)
			if d := time.Since(start); d > time.Second {
				t.Errorf("stream closed %v after the change", d)
			}
			_, err = a.client.BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{})
			if status.Code(err) != codes.PermissionDenied {
				t.Errorf("next call: %v, want PermissionDenied", err)
			}
			if tt.name != "CA removed" {
				// Other agents keep their streams.
				e.createEntry("spiffe://example.org/w", agentB, nil)
				if _, err := otherStream.Recv(); err != nil {
					t.Errorf("other agent's stream: %v", err)
				}
			}
		})
	}
}

func TestRenewAgent(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	stream, err := a.client.Sync(ctxT(t), &nodev1.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(10 * time.Minute)
	oldSerial := a.serial()
	resp, err := a.client.RenewAgent(ctxT(t), &nodev1.RenewAgentRequest{Csr: newCSR(t, a.key)})
	if err != nil {
		t.Fatalf("RenewAgent: %v", err)
	}
	renewed := &agent{id: a.id, key: a.key}
	renewed.setSVID(t, resp.SvidChain)
	if renewed.leaf.URIs[0].String() != agentA || !renewed.leaf.NotAfter.After(a.leaf.NotAfter) {
		t.Errorf("renewed SVID: %s until %v", renewed.leaf.URIs[0], renewed.leaf.NotAfter)
	}
	rec := e.fetchAgent(a.id)
	if rec.SerialNumber != renewed.serial() || rec.PrevSerialNumber != oldSerial || !rec.CertNotAfter.Equal(renewed.leaf.NotAfter) || !rec.UpdatedAt.Equal(e.clock.Now()) {
		t.Errorf("record after renewal: %+v", rec)
	}

	// The old certificate keeps working (its connection and stream too)
	// until the agent reconnects with the new one.
	if _, err := a.client.BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{}); err != nil {
		t.Errorf("old certificate after renewal: %v", err)
	}
	if _, err := e.client(a.cert).BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{}); err != nil {
		t.Errorf("old certificate on a new connection: %v", err)
	}
	renewed.client = e.client(renewed.cert)
	if _, err := renewed.client.BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{}); err != nil {
		t.Errorf("new certificate: %v", err)
	}
	e.createEntry("spiffe://example.org/w", agentA, nil)
	if _, err := stream.Recv(); err != nil {
		t.Errorf("stream on the old certificate: %v", err)
	}

	// Renewing again rotates the first certificate away: its stream
	// ends and it is refused.
	if _, err := renewed.client.RenewAgent(ctxT(t), &nodev1.RenewAgentRequest{Csr: newCSR(t, a.key)}); err != nil {
		t.Fatalf("second RenewAgent: %v", err)
	}
	_, err = stream.Recv()
	wantCode(t, err, codes.PermissionDenied, msgNotAttested)
	_, err = a.client.BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{})
	wantCode(t, err, codes.PermissionDenied, msgNotAttested)
	_, err = a.client.RenewAgent(ctxT(t), &nodev1.RenewAgentRequest{Csr: newCSR(t, a.key)})
	wantCode(t, err, codes.PermissionDenied, msgNotAttested)

	_, err = renewed.client.RenewAgent(ctxT(t), &nodev1.RenewAgentRequest{Csr: []byte("junk")})
	wantCode(t, err, codes.InvalidArgument, "")
}

// TestRenewCannotUndoBan: a ban that lands between the call's
// authentication and its record update wins.
func TestRenewCannotUndoBan(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	ban := func() { e.setBanned(a.id, true) }
	e.store.beforeUpdateAgent.Store(&ban)
	_, err := a.client.RenewAgent(ctxT(t), &nodev1.RenewAgentRequest{Csr: newCSR(t, a.key)})
	wantCode(t, err, codes.PermissionDenied, "agent is banned")
	if rec := e.fetchAgent(a.id); !rec.Banned || rec.SerialNumber != a.serial() || rec.PrevSerialNumber != "" {
		t.Errorf("record after a refused renewal: %+v", rec)
	}
	// A banned agent is refused before it gets that far.
	_, err = a.client.RenewAgent(ctxT(t), &nodev1.RenewAgentRequest{Csr: newCSR(t, a.key)})
	wantCode(t, err, codes.PermissionDenied, "agent is banned")
}

// TestResumedSessionReverified: VerifyConnection runs again when a TLS
// session is resumed, so a certificate whose CA has left the bundle is
// refused even without a full handshake.
func TestResumedSessionReverified(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	var handshakes atomic.Int32
	// One configuration for the listener, as credentials.NewTLS makes:
	// session tickets are encrypted with its keys.
	serverTLS := e.svc.TLSConfig()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := tls.Server(c, serverTLS)
				if tc.Handshake() == nil {
					handshakes.Add(1)
					_, _ = tc.Write([]byte("ok"))
					_, _ = io.Copy(io.Discard, tc)
				}
			}()
		}
	}()
	cfg := e.clientTLS(a.cert)
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	connect := func() (resumed bool, err error) {
		c, err := tls.Dial("tcp", lis.Addr().String(), cfg)
		if err != nil {
			return false, err
		}
		defer c.Close()
		buf := make([]byte, 2)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		// The server's verdict on our certificate arrives after the
		// handshake in TLS 1.3; so does the session ticket.
		if _, err := io.ReadFull(c, buf); err != nil {
			return c.ConnectionState().DidResume, err
		}
		return c.ConnectionState().DidResume, nil
	}
	if _, err := connect(); err != nil {
		t.Fatalf("first connection: %v", err)
	}
	if resumed, err := connect(); err != nil || !resumed {
		t.Fatalf("second connection: resumed %v, %v", resumed, err)
	}
	ca := e.km.Active().X509.Cert
	if _, err := e.store.UpdateBundle(context.Background(), td, func(b *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
		b = b.Clone()
		b.RemoveX509Authority(ca)
		return b, nil
	}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "resumed session refused", func() bool {
		resumed, err := connect()
		return resumed && err != nil
	})
}

// TestUnlistedMethodDenied: a method the node API has no policy for is
// refused, even with a valid agent certificate.
func TestUnlistedMethodDenied(t *testing.T) {
	var called atomic.Bool
	desc := &grpc.ServiceDesc{
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
				return ic(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: "/writ.test.v1.Unlisted/Call"}, h)
			},
		}},
	}
	e := newEnv(t, envOptions{extra: func(s *grpc.Server) { s.RegisterService(desc, struct{}{}) }})
	a := e.attest(agentA)
	conn := e.dial(a.cert)
	err := conn.Invoke(ctxT(t), "/writ.test.v1.Unlisted/Call", &emptypb.Empty{}, &emptypb.Empty{})
	wantCode(t, err, codes.PermissionDenied, "")
	if called.Load() {
		t.Error("handler of an unlisted method ran")
	}
}

// TestHandlersNeedInterceptors: a server built without the interceptors
// refuses agent calls instead of serving them unchecked.
func TestHandlersNeedInterceptors(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(e.svc.TLSConfig())))
	e.svc.Register(srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	e.addr = lis.Addr().String()
	for method, err := range callAll(t, e.client(a.cert), newCSR(t, a.key)) {
		t.Run(method, func(t *testing.T) { wantCode(t, err, codes.PermissionDenied, "") })
	}
}

func TestNotReadyUnavailable(t *testing.T) {
	e := newEnv(t, envOptions{})
	svc, err := nodeapi.New(nodeapi.Config{TrustDomain: td, Store: e.store, KeyManager: e.km, Clock: e.clock})
	if err != nil {
		t.Fatal(err)
	}
	_, err = svc.UnaryInterceptor()(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: nodev1.NodeService_Attest_FullMethodName},
		func(context.Context, any) (any, error) { t.Error("handler ran"); return nil, nil })
	wantCode(t, err, codes.Unavailable, "")
}

func TestNewValidates(t *testing.T) {
	e := newEnv(t, envOptions{})
	valid := func() nodeapi.Config {
		return nodeapi.Config{TrustDomain: td, Store: e.store, KeyManager: e.km}
	}
	tests := []struct {
		name string
		edit func(*nodeapi.Config)
	}{
		{name: "no trust domain", edit: func(c *nodeapi.Config) { c.TrustDomain = spiffeid.TrustDomain{} }},
		{name: "no store", edit: func(c *nodeapi.Config) { c.Store = nil }},
		{name: "no key manager", edit: func(c *nodeapi.Config) { c.KeyManager = nil }},
		{name: "X.509 TTL too long", edit: func(c *nodeapi.Config) { c.DefaultX509SVIDTTL = entry.MaxTTL + time.Second }},
		{name: "JWT TTL negative", edit: func(c *nodeapi.Config) { c.DefaultJWTSVIDTTL = -time.Second }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := valid()
			tt.edit(&cfg)
			if _, err := nodeapi.New(cfg); err == nil {
				t.Error("New accepted an invalid config")
			}
		})
	}
	if _, err := nodeapi.New(valid()); err != nil {
		t.Errorf("valid config: %v", err)
	}
}
