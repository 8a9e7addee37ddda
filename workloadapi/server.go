package workloadapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/jwtsvid"
	"writ.dev/writ/workloadapi/unixattest"

	"writ.dev/writ/internal/logkey"
	"writ.dev/writ/internal/metrics"
)

// Defaults for the zero values of Config's limits.
const (
	// DefaultMaxConnections bounds the open connections, and so the
	// processes pinned (two file descriptors each) at once.
	DefaultMaxConnections = 1024
	// DefaultMaxConnectionsPerUID bounds the open connections of one uid,
	// an eighth of DefaultMaxConnections, so that no one local user can
	// take every slot. With MaxConnections set and MaxConnectionsPerUID
	// not, the per-uid bound is an eighth of MaxConnections (at least 1).
	DefaultMaxConnectionsPerUID = DefaultMaxConnections / 8
	// DefaultMaxConcurrentStreams bounds the calls open at once on one
	// connection. A go-spiffe X509Source and JWTSource use one each.
	DefaultMaxConcurrentStreams = 64
	// DefaultMaxRecvMsgSize bounds a request. Requests are tiny: the
	// largest is a JWT-SVID to validate (jwtsvid.MaxTokenSize) or a list
	// of audiences.
	DefaultMaxRecvMsgSize = 64 << 10
	// DefaultMaxSendMsgSize bounds a response. It is the default receive
	// limit of gRPC clients, go-spiffe's included: a larger response
	// could not be read anyway.
	DefaultMaxSendMsgSize = 4 << 20
)

const (
	// maxHeaderListSize bounds the request headers of a call.
	maxHeaderListSize = 16 << 10
	// readBufferSize is the per-connection read buffer. Requests are
	// small, and thousands of idle connections must fit in memory.
	readBufferSize = 4 << 10
	// writeBufferSize is the per-connection write batch; it is taken from
	// a shared pool only while writing (grpc.SharedWriteBuffer).
	writeBufferSize = 32 << 10
	// minStreamWorkers is the least number of long-lived goroutines that
	// run calls: enough for the concurrent callers of a busy node (16
	// FetchJWTSVID callers each waiting for a token) beside a few open
	// streams, few enough to cost little memory when idle.
	minStreamWorkers = 32
	// handshakeTimeout bounds the gRPC connection preface. The transport
	// handshake itself reads nothing from the peer.
	handshakeTimeout = 10 * time.Second
	// firstCallTimeout is how long a new connection may stay without a
	// call before it is closed.
	firstCallTimeout = 10 * time.Second
	// refusedLinger is how long a connection that was not served (its
	// latest call was refused for want of identity) stays open once it
	// has no call in progress: long enough for the refusal to reach the
	// client, whose next call then connects afresh.
	refusedLinger = 2 * time.Second
	// shutdownGrace is how long Run waits for calls in flight (unary
	// calls waiting on the server for a JWT-SVID) before closing every
	// connection. Streams end at once.
	shutdownGrace = 5 * time.Second
	// maxAudiences and maxAudienceLen bound FetchJWTSVID's audience:
	// the server's bounds, so that an audience it would refuse to sign
	// for is InvalidArgument here rather than a failed signing.
	maxAudiences   = jwtsvid.MaxAudiences
	maxAudienceLen = jwtsvid.MaxAudienceLength
)

// Cache is what the Workload API reads: the agent's *svidcache.Cache.
type Cache interface {
	// Subscribe follows the X.509-SVIDs a selector set sees, and the
	// bundle.
	Subscribe(selectors []entry.Selector) *svidcache.Subscription
	// Identities returns the entries a selector set matches, signed or
	// not, ordered by SPIFFE ID, then entry ID.
	Identities(selectors []entry.Selector) []svidcache.Identity
	// FetchJWTSVID returns a JWT-SVID of an entry for an audience.
	FetchJWTSVID(ctx context.Context, entryID string, audience []string) (*svidcache.JWTSVID, error)
	// Bundle returns the local trust domain's bundle, nil before the
	// first one.
	Bundle() *spiffebundle.Bundle
	// FederatedBundles returns the bundles of the foreign trust domains
	// that the entries a selector set matches federate with, ordered by
	// trust domain.
	FederatedBundles(selectors []entry.Selector) []*spiffebundle.Bundle
}

// RevocationList says whether a token was revoked: the agent's
// *revocation.List, fed by the server's Sync stream.
type RevocationList interface {
	// Revoked reports whether a token of this jti, subject and client_id
	// (each possibly empty), issued at issuedAt (zero if unknown), is
	// revoked.
	Revoked(jti, subject, clientID string, issuedAt time.Time) bool
}

// Attestor pins the process at the other end of a connection:
// *unixattest.Attestor.
type Attestor interface {
	PinConn(c *net.UnixConn) (*unixattest.Process, error)
}

// Config configures a Server.
type Config struct {
	// SocketPath is the Unix socket to listen on (required). It must be a
	// file system path of at most MaxSocketPathLen bytes, in a directory
	// that only this user (or root) can write to; see the package
	// documentation.
	SocketPath string
	// Cache supplies SVIDs and bundles (required).
	Cache Cache
	// Attestor identifies callers (required).
	Attestor Attestor
	// TrustDomain is the local trust domain (required). A bundle of
	// another trust domain in the cache is not served.
	TrustDomain spiffeid.TrustDomain
	// Clock tells the time for JWT-SVID validation and the shutdown
	// grace period. Nil means the system clock.
	Clock clock.Clock
	// Logger receives warnings, and at debug level why callers were
	// refused. Nil discards them.
	Logger *slog.Logger

	// MaxConnections bounds the open connections; more are closed as
	// soon as they are accepted. Zero means DefaultMaxConnections.
	MaxConnections int
	// MaxConnectionsPerUID bounds the open connections of any one uid
	// (by the peer credentials of the connection); more are closed as
	// soon as they are accepted. Zero means an eighth of MaxConnections
	// (at least 1): DefaultMaxConnectionsPerUID by default. It may not
	// exceed MaxConnections.
	MaxConnectionsPerUID int
	// MaxConcurrentStreams bounds the calls open at once on one
	// connection. Zero means DefaultMaxConcurrentStreams.
	MaxConcurrentStreams int
	// MaxRecvMsgSize bounds requests, in bytes. Zero means
	// DefaultMaxRecvMsgSize.
	MaxRecvMsgSize int
	// MaxSendMsgSize bounds responses, in bytes; a response that would be
	// larger fails with ResourceExhausted. Zero means
	// DefaultMaxSendMsgSize.
	MaxSendMsgSize int

	// Metrics counts calls, open streams and attestation time. Nil
	// records none.
	Metrics *metrics.Agent

	// Revocations, if set, makes ValidateJWTSVID refuse a token that it
	// lists as revoked (by its jti claim, or by its sub or client_id
	// claim with its iat).
	Revocations RevocationList

	// Synced, if set, is closed once the cache holds the agent's first
	// full set of entries from the server. Until then a caller that
	// matches no entry is answered Unavailable ("the agent has not
	// received its entries yet"), which clients retry, not
	// PermissionDenied: after a restart, or while the server cannot be
	// reached at start, the agent cannot yet tell. Nil: always synced.
	Synced <-chan struct{}

	// AllowVerifiersWithoutIdentity serves FetchX509Bundles,
	// FetchJWTBundles and ValidateJWTSVID to attested callers that match
	// no entry. By default they are refused with PermissionDenied, as
	// SPIRE does unless allow_unauthenticated_verifiers is set.
	AllowVerifiersWithoutIdentity bool
}

// Server serves the SPIFFE Workload API on a Unix socket.
type Server struct {
	socketPath string
	cache      Cache
	attestor   Attestor
	td         spiffeid.TrustDomain
	tdID       string // td.IDString(), the key of bundle maps
	clk        clock.Clock
	log        *slog.Logger
	metrics    *metrics.Agent
	// verifier validates JWT-SVIDs for ValidateJWTSVID, remembering the
	// signatures it has verified.
	verifier        *jwtsvid.Verifier
	revocations     RevocationList
	maxConns        int
	maxConnsPerUID  int
	maxStreams      int
	maxRecv         int
	maxSend         int
	allowVerifiers  bool
	synced          <-chan struct{} // nil: always
	ready, stopping chan struct{}
	running         atomic.Bool

	bundles atomic.Pointer[bundleResp] // of the latest bundle seen
	x509    x509RespCache
	fed     fedCache
	// extra are the services registered with RegisterService, before
	// Run; read-only once Run starts.
	extra []registration
}

// Errors returned by New and Run.
var (
	// ErrConfig: the Config is incomplete or invalid.
	ErrConfig = errors.New("workloadapi: invalid configuration")
	// ErrRunning: Run was called more than once.
	ErrRunning = errors.New("workloadapi: server already run")
)

// New returns a Server configured by cfg. It starts nothing: Run does.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.SocketPath == "":
		return nil, fmt.Errorf("%w: no socket path", ErrConfig)
	case cfg.Cache == nil:
		return nil, fmt.Errorf("%w: no cache", ErrConfig)
	case cfg.Attestor == nil:
		return nil, fmt.Errorf("%w: no attestor", ErrConfig)
	case cfg.TrustDomain.IsZero():
		return nil, fmt.Errorf("%w: no trust domain", ErrConfig)
	case cfg.MaxConnections < 0, cfg.MaxConnectionsPerUID < 0, cfg.MaxConcurrentStreams < 0, cfg.MaxRecvMsgSize < 0, cfg.MaxSendMsgSize < 0:
		return nil, fmt.Errorf("%w: negative limit", ErrConfig)
	case cfg.MaxConcurrentStreams > 1<<20:
		return nil, fmt.Errorf("%w: MaxConcurrentStreams %d is too large", ErrConfig, cfg.MaxConcurrentStreams)
	}
	if err := CheckSocketPath(cfg.SocketPath); err != nil {
		return nil, err
	}
	s := &Server{
		socketPath:     cfg.SocketPath,
		cache:          cfg.Cache,
		attestor:       cfg.Attestor,
		td:             cfg.TrustDomain,
		synced:         cfg.Synced,
		tdID:           cfg.TrustDomain.IDString(),
		clk:            cfg.Clock,
		verifier:       jwtsvid.NewVerifier(0),
		revocations:    cfg.Revocations,
		log:            cfg.Logger,
		metrics:        cfg.Metrics,
		maxConns:       cmpOr(cfg.MaxConnections, DefaultMaxConnections),
		maxStreams:     cmpOr(cfg.MaxConcurrentStreams, DefaultMaxConcurrentStreams),
		maxRecv:        cmpOr(cfg.MaxRecvMsgSize, DefaultMaxRecvMsgSize),
		maxSend:        cmpOr(cfg.MaxSendMsgSize, DefaultMaxSendMsgSize),
		allowVerifiers: cfg.AllowVerifiersWithoutIdentity,
		ready:          make(chan struct{}),
		stopping:       make(chan struct{}),
	}
	s.maxConnsPerUID = cmpOr(cfg.MaxConnectionsPerUID, max(1, s.maxConns/8))
	if s.maxConnsPerUID > s.maxConns {
		return nil, fmt.Errorf("%w: MaxConnectionsPerUID %d exceeds MaxConnections %d", ErrConfig, s.maxConnsPerUID, s.maxConns)
	}
	if s.clk == nil {
		s.clk = clock.Real()
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

func cmpOr(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// Ready is closed once the socket is listening. If Run fails before
// that, it is never closed: wait for Run's result too.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Run listens on the socket and serves until ctx ends, then stops: open
// streams end with Unavailable, unary calls in flight get a grace period
// (5 s on the Clock), every connection is closed and the socket file is
// removed. It returns nil after a stop caused by ctx, or the error that
// prevented serving. Run may be called once.
func (s *Server) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	sock, err := listen(s.socketPath, s.log)
	if err != nil {
		return err
	}
	defer func() {
		if err := sock.Close(); err != nil {
			s.log.Warn("cannot remove the Workload API socket", "socket_path", s.socketPath, logkey.Error, err)
		}
	}()
	lis := newLimitListener(sock, s.maxConns, s.maxConnsPerUID, s.clk, s.log)

	gs := grpc.NewServer(
		grpc.Creds(transportCreds{s: s}),
		grpc.ForceServerCodecV2(codec{}),
		grpc.MaxConcurrentStreams(uint32(s.maxStreams)),
		grpc.MaxRecvMsgSize(s.maxRecv),
		grpc.MaxSendMsgSize(s.maxSend),
		grpc.MaxHeaderListSize(maxHeaderListSize),
		grpc.ReadBufferSize(readBufferSize),
		grpc.WriteBufferSize(writeBufferSize),
		grpc.SharedWriteBuffer(true),
		grpc.ConnectionTimeout(handshakeTimeout),
		// Clients may ping idle connections, but not flood.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.ChainUnaryInterceptor(s.unaryMetrics, unaryTrack, s.unaryHeader),
		grpc.ChainStreamInterceptor(s.streamMetrics, streamTrack, s.streamHeader),
		grpc.WaitForHandlers(true),
		// Calls run on long-lived workers whose stacks have grown to
		// the handlers' depth, not on new goroutines that grow theirs
		// on every call. A call that waits (a FetchJWTSVID waiting for
		// the server to sign, a stream) holds its worker meanwhile: a
		// call finding every worker busy runs on a new goroutine.
		grpc.NumStreamWorkers(uint32(max(runtime.GOMAXPROCS(0), minStreamWorkers))),
	)
	workload.RegisterSpiffeWorkloadAPIServer(gs, &handler{s: s})
	for _, r := range s.extra {
		gs.RegisterService(r.desc, r.impl)
	}
	reflection.Register(gs)

	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	s.log.Info("Workload API listening", "socket_path", s.socketPath)
	close(s.ready)

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-served:
		// Serve returns early only if the listener fails.
		served <- serveErr
	}
	close(s.stopping) // streams return
	stopped := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(stopped)
	}()
	t := s.clk.NewTimer(shutdownGrace)
	select {
	case <-stopped:
	case <-t.C():
		s.log.Warn("Workload API calls still running after the grace period; closing their connections")
		gs.Stop()
		<-stopped
	}
	t.Stop()
	<-served
	if serveErr != nil {
		return fmt.Errorf("workloadapi: serve %s: %w", s.socketPath, serveErr)
	}
	s.log.Info("Workload API stopped", "socket_path", s.socketPath)
	return nil
}
