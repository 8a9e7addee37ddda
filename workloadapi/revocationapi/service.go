package revocationapi

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"writ.dev/writ/agent/revocation"
	agentv1 "writ.dev/writ/ca/api/agent/v1"
	"writ.dev/writ/workloadapi"
)

// Socket is the Workload API server the service is registered on:
// *workloadapi.Server.
type Socket interface {
	// Attest identifies the caller of a call on the socket.
	Attest(ctx context.Context) (*workloadapi.Caller, error)
	// Stopping is closed when the socket's server begins to stop.
	Stopping() <-chan struct{}
}

// List is the agent's revocation list: *revocation.List.
type List interface {
	Subscribe() *revocation.Subscription
	Changes(cur revocation.Cursor) ([]revocation.Revocation, revocation.Cursor, bool)
}

// ServiceConfig configures a Service.
type ServiceConfig struct {
	// Socket attests callers (required).
	Socket Socket
	// List is what is served (required).
	List List
	// Logger receives, at debug level, the streams opened. Nil discards.
	Logger *slog.Logger
}

// ErrConfig: a ServiceConfig or ClientConfig is incomplete.
var ErrConfig = errors.New("revocationapi: invalid configuration")

var errStopping = status.Error(codes.Unavailable, "the agent is shutting down")

// Service serves RevocationService.
type Service struct {
	agentv1.UnimplementedRevocationServiceServer
	socket Socket
	list   List
	log    *slog.Logger
}

// NewService returns a Service configured by cfg.
func NewService(cfg ServiceConfig) (*Service, error) {
	if cfg.Socket == nil || cfg.List == nil {
		return nil, ErrConfig
	}
	s := &Service{socket: cfg.Socket, list: cfg.List, log: cfg.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// Register registers s on r (the Workload API server).
func (s *Service) Register(r grpc.ServiceRegistrar) {
	agentv1.RegisterRevocationServiceServer(r, s)
}

// WatchRevocations sends the full list, then the additions as they come
// (see the proto). Any attested caller may watch: the list names tokens
// and clients, not secrets.
func (s *Service) WatchRevocations(_ *agentv1.WatchRevocationsRequest, stream grpc.ServerStreamingServer[agentv1.WatchRevocationsResponse]) error {
	ctx := stream.Context()
	caller, err := s.socket.Attest(ctx)
	if err != nil {
		return err
	}
	sub := s.list.Subscribe()
	defer sub.Close()
	var cur revocation.Cursor
	first := true
	for {
		rs, next, full := s.list.Changes(cur)
		cur = next
		if first || full || len(rs) > 0 {
			if !first {
				// The caller may have exited while the stream waited.
				if err := caller.Check(); err != nil {
					return err
				}
			}
			if err := send(stream, full, rs); err != nil {
				return err
			}
			first = false
		}
		select {
		case <-sub.C():
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-s.socket.Stopping():
			return errStopping
		}
	}
}

// MaxPerMessage is the most revocations one message carries: a full list
// of more is sent in several (WatchRevocationsResponse.more), so that no
// message nears the socket's 4 MiB limit (a revocation takes at most
// about 150 bytes on the wire).
const MaxPerMessage = 10_000

// send sends rs as one message, or a full list longer than MaxPerMessage
// as several.
func send(stream grpc.ServerStreamingServer[agentv1.WatchRevocationsResponse], full bool, rs []revocation.Revocation) error {
	for {
		n := min(len(rs), MaxPerMessage)
		more := n < len(rs)
		if err := stream.Send(&agentv1.WatchRevocationsResponse{Full: full, Revocations: ToWire(rs[:n]), More: full && more}); err != nil {
			return err
		}
		rs = rs[n:]
		if !more {
			return nil
		}
	}
}

// ToWire converts revocations to their wire form.
func ToWire(rs []revocation.Revocation) []*agentv1.Revocation {
	out := make([]*agentv1.Revocation, len(rs))
	for i, r := range rs {
		out[i] = &agentv1.Revocation{Jti: r.JTI, ClientId: r.ClientID, RevokedAt: r.UnixRevokedAt(), ExpiresAt: r.UnixExpiresAt()}
	}
	return out
}
