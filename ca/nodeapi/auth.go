package nodeapi

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"runtime"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/datastore"

	"writ.dev/writ/internal/logkey"
)

// Messages callers see when refused. They say what failed but not which
// records exist.
const (
	msgNotAttested   = "agent is not attested"
	msgBanned        = "agent is banned"
	msgNotReady      = "node API is starting"
	msgStopping      = "node API is stopping"
	msgNoPolicy      = "permission denied: method has no access policy"
	msgInternal      = "internal error"
	msgUnavailable   = "datastore unavailable, retry later"
	msgNoInterceptor = "permission denied"
)

// rule is the access policy of one method.
type rule struct {
	// public methods need no agent certificate.
	public bool
	// attest methods are node attestations, whose number in progress is
	// bounded (see attestLimiter). They are public.
	attest bool
}

// rules maps each method, by its canonical full name, to its policy. A
// method that is not here is refused, whatever else is registered on the
// server.
var rules = map[string]rule{
	nodev1.NodeService_Attest_FullMethodName:                        {public: true, attest: true},
	nodev1.NodeService_AttestNode_FullMethodName:                    {public: true, attest: true},
	nodev1.NodeService_RenewAgent_FullMethodName:                    {},
	nodev1.NodeService_Sync_FullMethodName:                          {},
	nodev1.NodeService_BatchSignX509SVID_FullMethodName:             {},
	nodev1.NodeService_SignJWTSVID_FullMethodName:                   {},
	nodev1.NodeService_ReportTemplates_FullMethodName:               {},
	nodev1.NodeService_AckBundle_FullMethodName:                     {},
	nodev1.NodeService_MintDownstreamX509CA_FullMethodName:          {},
	nodev1.NodeService_PublishDownstreamJWTAuthority_FullMethodName: {},
	nodev1.NodeService_BatchSignJWTSVID_FullMethodName:              {},
	healthpb.Health_Check_FullMethodName:                            {public: true},
	healthpb.Health_Watch_FullMethodName:                            {public: true},
}

// caller is an authenticated agent, as the interceptor found it.
type caller struct {
	// method is the canonical full method name.
	method string
	// public is set for methods that need no agent; id and the rest are
	// then zero.
	public bool
	id     spiffeid.ID
	serial string
	// chain is the client's certificate chain, leaf first.
	chain []*x509.Certificate
}

type callerKey struct{}

// callerFrom returns the caller the interceptor put in ctx. Handlers call
// it first, so that a server built without the interceptors refuses every
// call instead of serving it unchecked.
func (s *Service) callerFrom(ctx context.Context, wantAgent bool) (*caller, error) {
	c, ok := ctx.Value(callerKey{}).(*caller)
	if !ok || c == nil || (wantAgent && c.public) {
		s.log.LogAttrs(ctx, slog.LevelError, "node API call refused: the node API interceptors are not installed")
		return nil, status.Error(codes.PermissionDenied, msgNoInterceptor)
	}
	return c, nil
}

// UnaryInterceptor returns the interceptor that authenticates unary
// calls. Install it on the server the Service is registered with (as
// ServerOptions does).
func (s *Service) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		c, err := s.authenticate(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		if rules[info.FullMethod].attest {
			release, err := s.admitAttestation(ctx, info.FullMethod)
			if err != nil {
				return nil, err
			}
			defer release()
		}
		return handler(context.WithValue(ctx, callerKey{}, c), req)
	}
}

// StreamInterceptor returns the interceptor that authenticates streaming
// calls. Install it on the server the Service is registered with (as
// ServerOptions does).
func (s *Service) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		c, err := s.authenticate(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		if rules[info.FullMethod].attest {
			// The slot is held until the handler returns, which it does
			// when the stream ends however it ends (the agent cancels,
			// the connection drops, a challenge times out).
			release, err := s.admitAttestation(ss.Context(), info.FullMethod)
			if err != nil {
				return err
			}
			defer release()
		}
		return handler(srv, &callerStream{ServerStream: ss, ctx: context.WithValue(ss.Context(), callerKey{}, c)})
	}
}

// callerStream is a ServerStream whose context carries the caller.
type callerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (cs *callerStream) Context() context.Context { return cs.ctx }

// authenticate applies the method's policy: public methods pass; the
// others need a client certificate that verifies now against the current
// bundle and that is the current (or previous) certificate of an agent
// that is not banned.
func (s *Service) authenticate(ctx context.Context, method string) (*caller, error) {
	r, known := rules[method]
	if !known {
		s.log.LogAttrs(ctx, slog.LevelWarn, "node API call denied", slog.String(logkey.Method, method), slog.String(logkey.Reason, "method has no access policy"))
		return nil, status.Error(codes.PermissionDenied, msgNoPolicy)
	}
	if !s.isReady() {
		return nil, status.Error(codes.Unavailable, msgNotReady)
	}
	select {
	case <-s.stopping:
		// The index and the server certificate are no longer kept
		// current.
		return nil, status.Error(codes.Unavailable, msgStopping)
	default:
	}
	if r.public {
		return &caller{method: method, public: true}, nil
	}
	chain := peerChain(ctx)
	if len(chain) == 0 {
		return nil, s.deny(ctx, method, spiffeid.ID{}, "", "no client certificate", msgNotAttested)
	}
	id, err := s.verifyPeer(chain)
	if err != nil {
		return nil, s.deny(ctx, method, spiffeid.ID{}, "", err.Error(), msgNotAttested)
	}
	serial := chain[0].SerialNumber.String()
	st := s.idx.certStatus(id, chain[0])
	if st == agentUnknown || st == agentUnrecorded || st == agentStale {
		// The agent may have just attested or renewed and the index not
		// yet seen it: wait until it has applied every committed change.
		err := s.idx.catchUp(ctx)
		if err != nil && ctx.Err() == nil {
			s.log.LogAttrs(ctx, slog.LevelWarn, "cannot bring the agent list up to date; using the last known one", slog.String(logkey.Error, err.Error()))
		}
		st = s.idx.certStatus(id, chain[0])
		if st == agentUnrecorded && err == nil {
			// A renewal made while the datastore was unavailable:
			// the datastore answers again, so record it.
			if st, err = s.recordRenewal(ctx, id, chain[0]); err != nil {
				return nil, s.internal(ctx, &caller{method: method, id: id, serial: serial}, "record agent SVID", err)
			}
		}
	}
	switch st {
	case agentBanned:
		return nil, s.deny(ctx, method, id, serial, "agent is banned", msgBanned)
	case agentUnknown:
		return nil, s.deny(ctx, method, id, serial, "no agent record for this certificate", msgNotAttested)
	case agentStale:
		s.log.LogAttrs(ctx, slog.LevelWarn, "node API call refused: the agent SVID is not recorded and the agent list was last read too long ago to judge it", slog.String(logkey.Method, method), slog.String(logkey.SPIFFEID, id.String()), slog.String(logkey.Serial, serial))
		return nil, status.Error(codes.Unavailable, msgUnavailable)
	case agentUnrecorded:
		s.log.LogAttrs(ctx, slog.LevelDebug, "agent authenticated by an SVID its record does not name yet; the datastore is unavailable", slog.String(logkey.Method, method), slog.String(logkey.SPIFFEID, id.String()), slog.String(logkey.Serial, serial))
	}
	return &caller{method: method, id: id, serial: serial, chain: chain}, nil
}

// deny logs a refused call and returns the error the caller sees.
func (s *Service) deny(ctx context.Context, method string, id spiffeid.ID, serial, reason, msg string) error {
	attrs := []slog.Attr{slog.String(logkey.Method, method)}
	if !id.IsZero() {
		attrs = append(attrs, slog.String(logkey.SPIFFEID, id.String()))
	}
	if serial != "" {
		attrs = append(attrs, slog.String(logkey.Serial, serial))
	}
	attrs = append(attrs, slog.String(logkey.Reason, reason))
	s.log.LogAttrs(ctx, slog.LevelWarn, "node API call denied", attrs...)
	return status.Error(codes.PermissionDenied, msg)
}

// peerChain returns the verified TLS client certificates of the call, if
// any.
func peerChain(ctx context.Context) []*x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil
	}
	return info.State.PeerCertificates
}

// internal logs err once and returns the error the caller sees:
// Canceled or DeadlineExceeded if the call's context ended, otherwise
// Internal with a generic message (Unavailable if the datastore cannot be
// reached for now).
func (s *Service) internal(ctx context.Context, c *caller, op string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil && errors.Is(err, ctxErr) {
		return status.FromContextError(ctxErr).Err()
	}
	attrs := []slog.Attr{slog.String("op", op), slog.String(logkey.Error, err.Error())}
	if c != nil {
		attrs = append(attrs, slog.String(logkey.Method, c.method))
		if !c.id.IsZero() {
			attrs = append(attrs, slog.String(logkey.SPIFFEID, c.id.String()))
		}
	}
	if errors.Is(err, datastore.ErrUnavailable) {
		s.log.LogAttrs(ctx, slog.LevelWarn, "node API call failed", attrs...)
		return status.Error(codes.Unavailable, msgUnavailable)
	}
	s.log.LogAttrs(ctx, slog.LevelError, "node API call failed", attrs...)
	return status.Error(codes.Internal, msgInternal)
}

// Recommended transport limits (see ServerOptions).
const (
	// MaxConcurrentStreams per connection: an agent holds one Sync stream
	// and makes a few unary calls at a time.
	MaxConcurrentStreams = 64
	// HandshakeTimeout bounds a connection's TLS handshake.
	HandshakeTimeout = 10 * time.Second
)

// ServerOptions returns the options to build the node API's grpc.Server
// with: TLS credentials from TLSConfig, the interceptors, keepalive
// enforcement and pings (so that streams of vanished agents end), a
// handshake timeout and a per-connection stream limit. Messages keep
// gRPC's default 4 MiB receive limit, which fits a full batch of
// MaxBatchSign CSRs.
func (s *Service) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(s.TLSConfig())),
		grpc.ChainUnaryInterceptor(s.UnaryInterceptor()),
		grpc.ChainStreamInterceptor(s.StreamInterceptor()),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             20 * time.Second,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    time.Minute,
			Timeout: 20 * time.Second,
		}),
		grpc.MaxConcurrentStreams(MaxConcurrentStreams),
		grpc.ConnectionTimeout(HandshakeTimeout),
		// Agents hold one mostly idle connection each: share write
		// buffers across connections, and read frames straight from the
		// TLS connection, which already buffers a whole record (a read
		// buffer of gRPC's own would cost every connection its size),
		// so that thousands of agents cost little memory.
		grpc.SharedWriteBuffer(true),
		grpc.ReadBufferSize(0),
		grpc.WriteBufferSize(connWriteBufferSize),
		// Calls run on long-lived workers whose stacks have grown to
		// the handlers' depth (see workloadapi).
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
		// Fixed flow-control windows turn off gRPC's bandwidth-delay
		// estimation, which answers each request with a ping (more
		// writes and wake-ups per call on both sides). Windows are
		// credit, not buffers: an agent's requests (a full batch of
		// CSRs) fit in one.
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(connWindow),
	}
}

// streamWindow and connWindow are the node API's flow-control windows
// for what agents send.
const (
	streamWindow = 1 << 20
	connWindow   = 4 << 20
)

// connWriteBufferSize is the node API's write batch (gRPC's default is
// 32 KiB), taken from a shared pool only while a connection writes.
const connWriteBufferSize = 8 << 10
