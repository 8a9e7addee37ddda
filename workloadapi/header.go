package workloadapi

import (
	"context"
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// SecurityHeader is the metadata key every Workload API call must carry,
// with the single value "true". It shows that the caller meant to call
// the Workload API, so that a proxy tricked into forwarding a request
// (server-side request forgery) cannot.
const SecurityHeader = "workload.spiffe.io"

// Status errors the peer sees.
var (
	errNoHeader   = status.Error(codes.InvalidArgument, "security header missing from request")
	errNoIdentity = status.Error(codes.PermissionDenied, "no identity issued")
	// errNotSynced answers a caller that matches no entry before the
	// agent has its entries.
	errNotSynced = status.Error(codes.Unavailable, "the agent has not received its entries yet")
	errStopping  = status.Error(codes.Unavailable, "the Workload API is shutting down")
	errNoBundle  = status.Error(codes.Unavailable, "no trust bundle yet")
)

// checkSecurityHeader reports whether md carries SecurityHeader exactly
// once, with the value "true". gRPC lowercases metadata keys.
func checkSecurityHeader(md metadata.MD) error {
	v := md[SecurityHeader]
	if len(v) != 1 || v[0] != "true" {
		return errNoHeader
	}
	return nil
}

func headerFrom(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	return checkSecurityHeader(md)
}

// SecurityHeaderDialOptions are the dial options of a client of a service
// on the agent socket other than the Workload API (RevocationService,
// DownstreamService): they add the security header to every call.
func SecurityHeaderDialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(withSecurityHeader(ctx), method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(withSecurityHeader(ctx), desc, cc, method, opts...)
		}),
	}
}

// withSecurityHeader adds SecurityHeader to ctx's outgoing metadata
// unless it is there already.
func withSecurityHeader(ctx context.Context) context.Context {
	if md, ok := metadata.FromOutgoingContext(ctx); ok && len(md[SecurityHeader]) > 0 {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, SecurityHeader, "true")
}

// unaryHeaderCheck and streamHeaderCheck refuse, before anything else,
// calls of every service on the socket (reflection included) that lack
// the security header.
func unaryHeaderCheck(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := headerFrom(ctx); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func streamHeaderCheck(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := headerFrom(ss.Context()); err != nil {
		return err
	}
	return handler(srv, ss)
}

// unaryTrack and streamTrack tell the call's connection when a call
// starts and ends, and whether it was served (it returned a response, or
// a stream sent a message) or refused for want of identity: a connection
// that is not served is closed once idle (serverConn).
func unaryTrack(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	st := connStateFrom(ctx)
	if st == nil || st.conn == nil {
		return handler(ctx, req)
	}
	st.conn.callStarted()
	resp, err := handler(ctx, req)
	st.conn.callEnded(outcome(err == nil, err))
	return resp, err
}

func streamTrack(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	st := connStateFrom(ss.Context())
	if st == nil || st.conn == nil {
		return handler(srv, ss)
	}
	st.conn.callStarted()
	ts := &trackedStream{ServerStream: ss, conn: st.conn}
	err := handler(srv, ts)
	st.conn.callEnded(outcome(ts.sent, err))
	return err
}

// outcome is what callEnded is told: served if the call answered, refused
// if it failed for want of identity, nil otherwise.
func outcome(served bool, err error) *bool {
	switch {
	case errors.Is(err, errNoIdentity):
		refused := false
		return &refused
	case served:
		return &served
	}
	return nil
}

// trackedStream notes the first message sent.
type trackedStream struct {
	grpc.ServerStream
	conn *serverConn
	sent bool // only the handler's goroutine sends
}

func (s *trackedStream) SendMsg(m any) error {
	err := s.ServerStream.SendMsg(m)
	if err == nil && !s.sent {
		s.sent = true
		s.conn.markServed()
	}
	return err
}

// contextStatus is the status of a call whose context ended.
func contextStatus(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return status.Error(codes.Canceled, err.Error())
}
