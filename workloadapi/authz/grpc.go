package authz

import (
	"context"
	"errors"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"writ.dev/writ/internal/logkey"
)

// authorizationKey is the gRPC metadata key of the bearer token (gRPC
// lowercases keys).
const authorizationKey = "authorization"

// UnaryServerInterceptor returns an interceptor that authenticates each
// call by the bearer JWT-SVID of its "authorization" metadata
// ("Bearer <token>"), authorizes the caller and calls the handler with the
// caller's SPIFFE ID in the context (CallerID). A missing, malformed or
// invalid token (or more than one authorization value) fails the call
// with Unauthenticated; a caller the policy does not allow, with
// PermissionDenied.
func (a *JWTAuthorizer) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		id, err := a.authenticateGRPC(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return handler(WithCallerID(ctx, id), req)
	}
}

// StreamServerInterceptor is UnaryServerInterceptor for streaming calls:
// the check runs once, when the stream opens.
func (a *JWTAuthorizer) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		id, err := a.authenticateGRPC(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, &callerStream{ServerStream: ss, ctx: WithCallerID(ss.Context(), id)})
	}
}

// callerStream is a ServerStream whose context carries the caller.
type callerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *callerStream) Context() context.Context { return s.ctx }

// authenticateGRPC returns the caller of a call, or its status error.
func (a *JWTAuthorizer) authenticateGRPC(ctx context.Context, method string) (spiffeid.ID, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	values := md.Get(authorizationKey)
	var (
		id  spiffeid.ID
		err error
	)
	switch len(values) {
	case 0:
		err = ErrNoToken
	case 1:
		id, err = a.Authenticate(values[0])
	default:
		err = errMultipleHeaders
	}
	switch {
	case err == nil:
		return id, nil
	case errors.Is(err, ErrNotAllowed):
		a.log.Debug("call refused: caller not allowed", slog.String("method", method), slog.String(logkey.SPIFFEID, id.String()))
		return spiffeid.ID{}, status.Error(codes.PermissionDenied, "caller not allowed")
	case errors.Is(err, ErrNoToken):
		a.log.Debug("call refused: no bearer token", slog.String("method", method))
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, "a JWT-SVID bearer token is required")
	default:
		a.log.Debug("call refused: invalid bearer token", slog.String("method", method), slog.String(logkey.Reason, err.Error()))
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, describe(err))
	}
}
