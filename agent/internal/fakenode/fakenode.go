package fakenode

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/jwtsvid"
	"writ.dev/writ/ca/x509ca"
)

// Options configures a fake server. Zero fields get defaults.
type Options struct {
	Clock       clock.Clock
	TrustDomain spiffeid.TrustDomain
	// AgentPath is the agent's SPIFFE ID path (default /agent/node1).
	AgentPath string
	// AgentTTL (default 4h), X509TTL (default 1h, for entries with none)
	// and JWTTTL (default 5m) are the lifetimes of what it signs.
	AgentTTL time.Duration
	X509TTL  time.Duration
	JWTTTL   time.Duration
	// ServerID overrides the server certificate's SPIFFE ID (default
	// spiffe://<td>/writ/server).
	ServerID spiffeid.ID
	// ServerCertAge makes the server's TLS certificate as if issued that
	// long ago, but not before its CA (a real server's may be hours old);
	// by default it is issued at each handshake.
	ServerCertAge time.Duration
	// ForeignServerCA makes the server present a certificate from a CA
	// that is not in its bundle.
	ForeignServerCA bool
	// UpstreamRoot makes the signing CA an intermediate below a root: the
	// bundle holds only the root, and every X.509-SVID (the server's
	// too) is sent with the CA certificate after the leaf.
	UpstreamRoot bool
	// Logf receives a line per call (e.g. t.Logf).
	Logf func(format string, args ...any)
	// OnBatch, if set, is called with the entry IDs of each
	// BatchSignX509SVID call before it is answered; the call waits for
	// it to return.
	OnBatch func(entryIDs []string)
}

// Server is a fake node API server.
type Server struct {
	nodev1.UnimplementedNodeServiceServer

	t        testing.TB
	opts     Options
	td       spiffeid.TrustDomain
	clk      clock.Clock
	root     *x509.Certificate // the first trust anchor: the first CA unless UpstreamRoot
	caNotAft time.Time
	// keys are the current signing keys and bundle (see RotateKeys).
	keys     atomic.Pointer[keySet]
	agentID  spiffeid.ID
	serverID spiffeid.ID
	addr     string

	mu sync.Mutex // guards the fields below
	// grpcSrv is nil while stopped.
	grpcSrv *grpc.Server
	tokens  map[string]bool // unused join tokens
	// evicted/banned: agent calls are refused.
	evicted bool
	entries map[string]*nodev1.Entry
	streams map[chan *nodev1.SyncResponse]struct{}
	// Recorded calls, and conns, the connections accepted.
	conns      int
	lastPeer   string
	attests    int
	renewals   int
	syncs      int
	batchSizes []int
	signed     map[string]int // entry ID -> X.509-SVIDs signed
	lastSigned map[string]time.Time
	jwtCalls   int
	acked      uint64 // highest bundle sequence number acknowledged
	// signDelay delays BatchSignX509SVID and SignJWTSVID.
	signDelay time.Duration
	failSign  error
	// busyAttests is the number of Attest calls still to refuse with
	// ResourceExhausted (see RefuseAttests).
	busyAttests int
	// revocations are sent in full Sync messages (see Revoke).
	revocations []*nodev1.Revocation
	// syncGate, while not nil, holds Sync calls before their first
	// message until it is closed (see HoldSync).
	syncGate chan struct{}
	// jwtGate, while not nil, holds SignJWTSVID calls until it is
	// closed (see HoldJWT); jwtHeld counts the calls it holds.
	jwtGate chan struct{}
	jwtHeld int
}

// keySet is what the server signs with and publishes. Never modified.
type keySet struct {
	ca     *x509ca.Issuer
	jwtKey jwtsvid.Key
	// roots verify agent SVIDs; the bundle holds them.
	roots   []*x509.Certificate
	jwtKeys []jwtsvid.Key
	seq     uint64
	bundle  []byte
	tainted *nodev1.TaintedAuthorities
}

// Start starts a fake server on 127.0.0.1:0 and stops it at the end of
// the test.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	if opts.Clock == nil {
		opts.Clock = clock.Real()
	}
	if opts.TrustDomain.IsZero() {
		opts.TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")
	}
	if opts.AgentPath == "" {
		opts.AgentPath = "/agent/node1"
	}
	if opts.AgentTTL == 0 {
		opts.AgentTTL = 4 * time.Hour
	}
	if opts.X509TTL == 0 {
		opts.X509TTL = time.Hour
	}
	if opts.JWTTTL == 0 {
		opts.JWTTTL = 5 * time.Minute
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	s := &Server{
		t: t, opts: opts, td: opts.TrustDomain, clk: opts.Clock,
		tokens:     make(map[string]bool),
		entries:    make(map[string]*nodev1.Entry),
		streams:    make(map[chan *nodev1.SyncResponse]struct{}),
		signed:     make(map[string]int),
		lastSigned: make(map[string]time.Time),
	}
	s.agentID = spiffeid.RequireFromPath(s.td, opts.AgentPath)
	s.serverID = spiffeid.RequireFromPath(s.td, "/writ/server")
	if !opts.ServerID.IsZero() {
		s.serverID = opts.ServerID
	}
	now := s.clk.Now()
	key := must(x509ca.GenerateKey(x509ca.KeyTypeECP256))
	caCert := must(x509ca.NewSelfSignedCA(now, s.td, key, 7*24*time.Hour))
	ks := &keySet{ca: &x509ca.Issuer{Cert: caCert, Signer: key}, roots: []*x509.Certificate{caCert}}
	s.root = caCert
	if opts.UpstreamRoot {
		interKey := must(x509ca.GenerateKey(x509ca.KeyTypeECP256))
		inter := must(x509ca.SignCA(now, s.td, interKey.Public(), ks.ca, 7*24*time.Hour))
		ks.ca = &x509ca.Issuer{Cert: inter, Signer: interKey, Chain: []*x509.Certificate{inter}}
	}
	s.caNotAft = ks.ca.Cert.NotAfter
	ks.jwtKey = jwtsvid.Key{ID: "jwt-key-1", Signer: must(x509ca.GenerateKey(x509ca.KeyTypeECP256))}
	ks.jwtKeys = []jwtsvid.Key{ks.jwtKey}
	ks.seq = 1
	ks.bundle = s.marshalBundle(ks)
	s.keys.Store(ks)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = lis.Addr().String()
	s.serve(lis)
	t.Cleanup(s.Stop)
	return s
}

// StartPeer starts a second fake server on 127.0.0.1:0 that shares p's
// trust domain, CA, JWT key, bundle and agent ID, as servers sharing a
// datastore do: an agent attested by one is accepted by the other. Its
// entries, join tokens, eviction and recorded calls are its own. It stops
// at the end of the test.
func StartPeer(t testing.TB, p *Server) *Server {
	t.Helper()
	s := &Server{
		t: t, opts: p.opts, td: p.td, clk: p.clk,
		root: p.root, caNotAft: p.caNotAft,
		agentID: p.agentID, serverID: p.serverID,
		tokens:     make(map[string]bool),
		entries:    make(map[string]*nodev1.Entry),
		streams:    make(map[chan *nodev1.SyncResponse]struct{}),
		signed:     make(map[string]int),
		lastSigned: make(map[string]time.Time),
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.keys.Store(p.keys.Load())
	s.addr = lis.Addr().String()
	s.serve(lis)
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) marshalBundle(ks *keySet) []byte {
	b := spiffebundle.FromX509Authorities(s.td, ks.roots)
	for _, k := range ks.jwtKeys {
		if err := b.AddJWTAuthority(k.ID, k.Signer.Public()); err != nil {
			panic(err)
		}
	}
	b.SetSequenceNumber(ks.seq)
	return must(b.Marshal())
}

// RotateKeys makes a new X.509 CA (self-signed) and JWT key, publishes
// them next to the old ones, signs with them from now on, and pushes the
// new bundle to open Sync streams. It returns the old CA's subject key ID
// (lowercase hex) and the old kid. Not with UpstreamRoot.
func (s *Server) RotateKeys() (oldCA, oldKid string) {
	s.t.Helper()
	if s.opts.UpstreamRoot {
		s.t.Fatal("fakenode: RotateKeys with UpstreamRoot")
	}
	key := must(x509ca.GenerateKey(x509ca.KeyTypeECP256))
	caCert := must(x509ca.NewSelfSignedCA(s.clk.Now(), s.td, key, 7*24*time.Hour))
	jk := jwtsvid.Key{ID: "jwt-key-" + entry.NewID(), Signer: must(x509ca.GenerateKey(x509ca.KeyTypeECP256))}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.keys.Load()
	ks := &keySet{
		ca: &x509ca.Issuer{Cert: caCert, Signer: key}, jwtKey: jk,
		roots:   append(slices.Clone(old.roots), caCert),
		jwtKeys: append(slices.Clone(old.jwtKeys), jk),
		seq:     old.seq + 1, tainted: old.tainted,
	}
	ks.bundle = s.marshalBundle(ks)
	s.keys.Store(ks)
	s.pushLocked(&nodev1.SyncResponse{Bundle: ks.bundle, Tainted: ks.tainted})
	return hex.EncodeToString(old.ca.Cert.SubjectKeyId), old.jwtKey.ID
}

// Taint sets the tainted authorities (they stay in the bundle), raises
// the bundle's sequence number and pushes it with them to open streams.
func (s *Server) Taint(x509IDs, jwtKeyIDs []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.keys.Load()
	ks := *old
	ks.seq++
	ks.tainted = &nodev1.TaintedAuthorities{X509AuthorityIds: x509IDs, JwtKeyIds: jwtKeyIDs}
	ks.bundle = s.marshalBundle(&ks)
	s.keys.Store(&ks)
	s.pushLocked(&nodev1.SyncResponse{Bundle: ks.bundle, Tainted: ks.tainted})
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// Address is the server's host:port.
func (s *Server) Address() string { return s.addr }

// TrustDomain is the server's trust domain.
func (s *Server) TrustDomain() spiffeid.TrustDomain { return s.td }

// AgentID is the SPIFFE ID attested agents get.
func (s *Server) AgentID() spiffeid.ID { return s.agentID }

// CA returns the signing CA certificate.
func (s *Server) CA() *x509.Certificate { return s.keys.Load().ca.Cert }

// Root returns the trust anchor: the root with UpstreamRoot, else the CA.
func (s *Server) Root() *x509.Certificate { return s.root }

// CAPEM returns the trust anchor in PEM, for --trust-bundle.
func (s *Server) CAPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.root.Raw})
}

// BundleJSON returns the SPIFFE bundle it serves.
func (s *Server) BundleJSON() []byte { return slices.Clone(s.keys.Load().bundle) }

func (s *Server) serverCert() (*tls.Certificate, error) {
	iss := s.keys.Load().ca
	now := s.clk.Now().Add(-s.opts.ServerCertAge)
	if now.Before(iss.Cert.NotBefore) {
		now = iss.Cert.NotBefore
	}
	if s.opts.ForeignServerCA {
		key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
		if err != nil {
			return nil, err
		}
		ca, err := x509ca.NewSelfSignedCA(now, s.td, key, 24*time.Hour)
		if err != nil {
			return nil, err
		}
		iss = &x509ca.Issuer{Cert: ca, Signer: key}
	}
	key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		return nil, err
	}
	der, err := x509ca.SignX509SVID(now, iss, x509ca.SVIDParams{ID: s.serverID, TTL: 24 * time.Hour, PublicKey: key.Public()})
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: iss.SVIDChain(der), PrivateKey: key}, nil
}

func (s *Server) serve(lis net.Listener) {
	tlsConf := &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.serverCert()
		},
		ClientAuth: tls.RequestClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return nil // Attest
			}
			_, err := x509ca.VerifyX509SVID(cs.PeerCertificates, s.keys.Load().roots, s.clk.Now())
			return err
		},
		Time: s.clk.Now,
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsConf)))
	nodev1.RegisterNodeServiceServer(g, s)
	s.mu.Lock()
	s.grpcSrv = g
	s.mu.Unlock()
	go func() { _ = g.Serve(countingListener{lis, s}) }()
}

// countingListener counts the connections it accepts (Stats.Conns).
type countingListener struct {
	net.Listener
	s *Server
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.s.mu.Lock()
		l.s.conns++
		l.s.lastPeer = c.RemoteAddr().String()
		l.s.mu.Unlock()
	}
	return c, err
}

// Stop stops serving at once, closing every connection and stream (an
// outage). It is idempotent.
func (s *Server) Stop() {
	s.mu.Lock()
	g := s.grpcSrv
	s.grpcSrv = nil
	for ch := range s.streams {
		close(ch)
		delete(s.streams, ch)
	}
	s.mu.Unlock()
	if g != nil {
		g.Stop()
	}
}

// Restart serves again on the same address after Stop.
func (s *Server) Restart() {
	s.t.Helper()
	var lis net.Listener
	var err error
	for range 50 {
		if lis, err = net.Listen("tcp", s.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		s.t.Fatalf("restart fake server: %v", err)
	}
	s.serve(lis)
}

// AddJoinToken returns a new one-time join token.
func (s *Server) AddJoinToken() string {
	tok := "token-" + entry.NewID()
	s.mu.Lock()
	s.tokens[tok] = true
	s.mu.Unlock()
	return tok
}

// RefuseAttests makes the next n Attest calls fail with
// ResourceExhausted and a RetryInfo detail, as a server busy with other
// attestations does; their join tokens are not used up.
func (s *Server) RefuseAttests(n int) {
	s.mu.Lock()
	s.busyAttests = n
	s.mu.Unlock()
}

// AllowJoinToken makes tok a valid one-time join token of this server
// (a token of a peer, say).
func (s *Server) AllowJoinToken(tok string) {
	s.mu.Lock()
	s.tokens[tok] = true
	s.mu.Unlock()
}

// Evict makes the server refuse the agent with PermissionDenied (evicted
// or banned), ending its open streams. Evict(false) accepts it again.
func (s *Server) Evict(evicted bool) {
	s.mu.Lock()
	s.evicted = evicted
	if evicted {
		for ch := range s.streams {
			close(ch)
			delete(s.streams, ch)
		}
	}
	s.mu.Unlock()
}

// SetSignDelay delays every signing call by d (real time).
func (s *Server) SetSignDelay(d time.Duration) {
	s.mu.Lock()
	s.signDelay = d
	s.mu.Unlock()
}

// Entry returns a valid wire entry for SPIFFE ID path with the given
// selectors ("type:value").
func (s *Server) Entry(path string, selectors ...string) *nodev1.Entry {
	return &nodev1.Entry{
		Id:          entry.NewID(),
		SpiffeId:    spiffeid.RequireFromPath(s.td, path).String(),
		Selectors:   selectors,
		X509SvidTtl: int64(s.opts.X509TTL / time.Second),
		JwtSvidTtl:  int64(s.opts.JWTTTL / time.Second),
		Revision:    1,
	}
}

// SetEntries replaces the agent's entries and pushes the change (created,
// updated and deleted entries) to open Sync streams.
func (s *Server) SetEntries(es ...*nodev1.Entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	msg := &nodev1.SyncResponse{}
	next := make(map[string]*nodev1.Entry, len(es))
	for _, e := range es {
		next[e.GetId()] = e
		msg.Entries = append(msg.Entries, e)
	}
	for id := range s.entries {
		if _, ok := next[id]; !ok {
			msg.DeletedEntryIds = append(msg.DeletedEntryIds, id)
		}
	}
	s.entries = next
	s.pushLocked(msg)
}

// Entries returns the agent's entries, in no order.
func (s *Server) Entries() []*nodev1.Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*nodev1.Entry, 0, len(s.entries))
	for _, e := range s.entries {
		out = append(out, e)
	}
	return out
}

// Store adds entries to the server's state without pushing anything.
func (s *Server) Store(es ...*nodev1.Entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range es {
		s.entries[e.GetId()] = e
	}
}

// Revoke adds revocations to those of full Sync messages and sends them
// to open streams in a message of their own.
func (s *Server) Revoke(rs ...*nodev1.Revocation) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.revocations = append(s.revocations, rs...)
	s.pushLocked(&nodev1.SyncResponse{Revocations: rs})
}

// Push sends msg as is to open Sync streams (entries are not recorded).
func (s *Server) Push(msg *nodev1.SyncResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pushLocked(msg)
}

func (s *Server) pushLocked(msg *nodev1.SyncResponse) {
	for ch := range s.streams {
		select {
		case ch <- msg:
		default:
			s.t.Errorf("fakenode: stream buffer full")
		}
	}
}

// Stats are the calls the server received.
type Stats struct {
	Attests, Renewals, Syncs, JWTCalls int
	BatchSizes                         []int
	Streams                            int
	// JWTHeld counts the SignJWTSVID calls HoldJWT holds now.
	JWTHeld int
	// Conns counts the connections accepted. An agent's session opens
	// one before it makes any call, so before it arms the timeout of its
	// wait for the first Sync message: tests that drive the clock until
	// the agent reconnects stop at a new connection, so as not to fire
	// that timeout while the server answers.
	Conns int
	// LastPeer is the remote address of the last connection accepted.
	LastPeer string
}

// Stats returns what the server received so far.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Attests: s.attests, Renewals: s.renewals, Syncs: s.syncs, JWTCalls: s.jwtCalls,
		BatchSizes: slices.Clone(s.batchSizes), Streams: len(s.streams), Conns: s.conns, JWTHeld: s.jwtHeld, LastPeer: s.lastPeer}
}

// Signed returns how many X.509-SVIDs were signed for an entry.
func (s *Server) Signed(entryID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.signed[entryID]
}

// ---- NodeService ----

// signSVID signs an X.509-SVID and returns its chain, leaf first.
func (s *Server) signSVID(id spiffeid.ID, dns []string, ttl time.Duration, csr []byte) ([][]byte, error) {
	pub, err := x509ca.CheckCSR(csr)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "CSR: %v", err)
	}
	ca := s.keys.Load().ca
	der, err := x509ca.SignX509SVID(s.clk.Now(), ca, x509ca.SVIDParams{ID: id, DNSNames: dns, TTL: ttl, PublicKey: pub})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "sign: %v", err)
	}
	return ca.SVIDChain(der), nil
}

// Attest implements NodeService.
func (s *Server) Attest(_ context.Context, req *nodev1.AttestRequest) (*nodev1.AttestResponse, error) {
	s.mu.Lock()
	s.attests++
	if s.busyAttests > 0 {
		s.busyAttests--
		s.mu.Unlock()
		s.opts.Logf("fakenode: Attest refused for load")
		st, err := status.New(codes.ResourceExhausted, "too many node attestations in progress on this server; retry later").
			WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(time.Second)})
		if err != nil {
			return nil, err
		}
		return nil, st.Err()
	}
	ok := s.tokens[req.GetJoinToken()]
	delete(s.tokens, req.GetJoinToken())
	s.evicted = false
	s.mu.Unlock()
	s.opts.Logf("fakenode: Attest (token ok: %v)", ok)
	if !ok {
		return nil, status.Error(codes.PermissionDenied, "no identity issued")
	}
	der, err := s.signSVID(s.agentID, nil, s.opts.AgentTTL, req.GetCsr())
	if err != nil {
		return nil, err
	}
	return &nodev1.AttestResponse{SvidChain: der, Bundle: s.keys.Load().bundle}, nil
}

// authorize checks the caller is the attested, not evicted agent.
func (s *Server) authorize(ctx context.Context) error {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return status.Error(codes.PermissionDenied, "no peer")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return status.Error(codes.PermissionDenied, "no client certificate")
	}
	id, err := x509ca.VerifyX509SVID(ti.State.PeerCertificates, s.keys.Load().roots, s.clk.Now())
	if err != nil || id != s.agentID {
		return status.Error(codes.PermissionDenied, "not an agent")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.evicted {
		return status.Error(codes.PermissionDenied, "agent evicted")
	}
	return nil
}

// RenewAgent implements NodeService.
func (s *Server) RenewAgent(ctx context.Context, req *nodev1.RenewAgentRequest) (*nodev1.RenewAgentResponse, error) {
	if err := s.authorize(ctx); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.renewals++
	s.mu.Unlock()
	s.opts.Logf("fakenode: RenewAgent")
	der, err := s.signSVID(s.agentID, nil, s.opts.AgentTTL, req.GetCsr())
	if err != nil {
		return nil, err
	}
	return &nodev1.RenewAgentResponse{SvidChain: der}, nil
}

// HoldSync makes Sync calls, from now on, wait before their first
// message until HoldSync(false) (or the caller gives up).
func (s *Server) HoldSync(hold bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case hold && s.syncGate == nil:
		s.syncGate = make(chan struct{})
	case !hold && s.syncGate != nil:
		close(s.syncGate)
		s.syncGate = nil
	}
}

// HoldJWT makes SignJWTSVID calls, from now on, wait until HoldJWT(false)
// (or the caller gives up); Stats().JWTHeld counts those waiting.
func (s *Server) HoldJWT(hold bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case hold && s.jwtGate == nil:
		s.jwtGate = make(chan struct{})
	case !hold && s.jwtGate != nil:
		close(s.jwtGate)
		s.jwtGate = nil
	}
}

// holdJWT waits while JWT calls are held.
func (s *Server) holdJWT(ctx context.Context) error {
	s.mu.Lock()
	gate := s.jwtGate
	if gate != nil {
		s.jwtHeld++
	}
	s.mu.Unlock()
	if gate == nil {
		return nil
	}
	defer func() {
		s.mu.Lock()
		s.jwtHeld--
		s.mu.Unlock()
	}()
	select {
	case <-gate:
		return nil
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
}

// Sync implements NodeService.
func (s *Server) Sync(_ *nodev1.SyncRequest, stream grpc.ServerStreamingServer[nodev1.SyncResponse]) error {
	if err := s.authorize(stream.Context()); err != nil {
		return err
	}
	s.mu.Lock()
	gate := s.syncGate
	if gate != nil {
		s.syncs++
	}
	s.mu.Unlock()
	if gate != nil {
		s.opts.Logf("fakenode: Sync held")
		select {
		case <-gate:
		case <-stream.Context().Done():
			return nil
		}
	}
	ch := make(chan *nodev1.SyncResponse, 1024)
	s.mu.Lock()
	if gate == nil {
		s.syncs++
	}
	ks := s.keys.Load()
	full := &nodev1.SyncResponse{Full: true, Bundle: ks.bundle, Tainted: ks.tainted}
	for _, e := range s.entries {
		full.Entries = append(full.Entries, e)
	}
	full.Revocations = slices.Clone(s.revocations)
	// In entry ID order, so that tests know which entries come last.
	slices.SortFunc(full.Entries, func(a, b *nodev1.Entry) int { return strings.Compare(a.GetId(), b.GetId()) })
	s.streams[ch] = struct{}{}
	s.mu.Unlock()
	s.opts.Logf("fakenode: Sync (%d entries)", len(full.Entries))
	defer func() {
		s.mu.Lock()
		if _, ok := s.streams[ch]; ok {
			delete(s.streams, ch)
		}
		s.mu.Unlock()
	}()
	if err := stream.Send(full); err != nil {
		return err
	}
	for {
		select {
		case msg, ok := <-ch:
			if !ok {
				return status.Error(codes.Unavailable, "stream closed by server")
			}
			if err := stream.Send(msg); err != nil {
				return err
			}
		case <-stream.Context().Done():
			return nil
		}
	}
}

func (s *Server) delay() error {
	s.mu.Lock()
	d, fail := s.signDelay, s.failSign
	s.mu.Unlock()
	if d > 0 {
		time.Sleep(d)
	}
	return fail
}

// BatchSignX509SVID implements NodeService.
func (s *Server) BatchSignX509SVID(ctx context.Context, req *nodev1.BatchSignX509SVIDRequest) (*nodev1.BatchSignX509SVIDResponse, error) {
	if err := s.authorize(ctx); err != nil {
		return nil, err
	}
	if err := s.delay(); err != nil {
		return nil, err
	}
	if s.opts.OnBatch != nil {
		ids := make([]string, len(req.GetRequests()))
		for i, r := range req.GetRequests() {
			ids[i] = r.GetEntryId()
		}
		s.opts.OnBatch(ids)
	}
	s.mu.Lock()
	s.batchSizes = append(s.batchSizes, len(req.GetRequests()))
	entries := make([]*nodev1.Entry, len(req.GetRequests()))
	for i, r := range req.GetRequests() {
		entries[i] = s.entries[r.GetEntryId()]
	}
	s.mu.Unlock()
	s.opts.Logf("fakenode: BatchSignX509SVID (%d)", len(req.GetRequests()))
	resp := &nodev1.BatchSignX509SVIDResponse{}
	for i, r := range req.GetRequests() {
		res := &nodev1.X509SVIDResult{EntryId: r.GetEntryId(), Status: &nodev1.Status{}}
		resp.Results = append(resp.Results, res)
		e := entries[i]
		if e == nil {
			res.Status = &nodev1.Status{Code: int32(codes.NotFound), Message: "no such entry"}
			continue
		}
		id, err := spiffeid.FromString(e.GetSpiffeId())
		if err != nil {
			res.Status = &nodev1.Status{Code: int32(codes.Internal), Message: err.Error()}
			continue
		}
		der, err := s.signSVID(id, e.GetDnsNames(), time.Duration(e.GetX509SvidTtl())*time.Second, r.GetCsr())
		if err != nil {
			st := status.Convert(err)
			res.Status = &nodev1.Status{Code: int32(st.Code()), Message: st.Message()}
			continue
		}
		res.SvidChain = der
		s.mu.Lock()
		s.signed[e.GetId()]++
		s.lastSigned[e.GetId()] = s.clk.Now()
		s.mu.Unlock()
	}
	return resp, nil
}

// SignJWTSVID implements NodeService.
func (s *Server) SignJWTSVID(ctx context.Context, req *nodev1.SignJWTSVIDRequest) (*nodev1.SignJWTSVIDResponse, error) {
	if err := s.authorize(ctx); err != nil {
		return nil, err
	}
	if err := s.holdJWT(ctx); err != nil {
		return nil, err
	}
	if err := s.delay(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.jwtCalls++
	e := s.entries[req.GetEntryId()]
	s.mu.Unlock()
	if e == nil {
		return nil, status.Error(codes.NotFound, "no such entry")
	}
	id, err := spiffeid.FromString(e.GetSpiffeId())
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	tok, exp, err := jwtsvid.Sign(s.clk.Now(), s.keys.Load().jwtKey, id, req.GetAudience(), time.Duration(e.GetJwtSvidTtl())*time.Second, s.caNotAft)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &nodev1.SignJWTSVIDResponse{Token: tok, ExpiresAt: exp.Unix()}, nil
}

// AckBundle implements NodeService.
func (s *Server) AckBundle(ctx context.Context, req *nodev1.AckBundleRequest) (*nodev1.AckBundleResponse, error) {
	if err := s.authorize(ctx); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.acked = max(s.acked, req.GetBundleSequence())
	s.mu.Unlock()
	return &nodev1.AckBundleResponse{}, nil
}

// Acked returns the highest bundle sequence number the agent acknowledged.
func (s *Server) Acked() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked
}

// BundleSequence returns the sequence number of the bundle it serves.
func (s *Server) BundleSequence() uint64 { return s.keys.Load().seq }
