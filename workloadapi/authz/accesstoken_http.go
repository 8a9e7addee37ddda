package authz

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"writ.dev/writ/ca/jwtsvid"
	"writ.dev/writ/internal/logkey"
)

// Middleware returns a handler that authenticates each request by its
// bearer access token (Authenticate, with the request's TLS client
// certificate) and calls next with the token in the request context
// (AccessTokenFrom; CallerID gives its subject). It answers itself,
// without calling next:
//
//   - no bearer token: 401, WWW-Authenticate: Bearer;
//   - a malformed, invalid, revoked or wrongly bound token, or more than
//     one Authorization header: 401, WWW-Authenticate: Bearer
//     error="invalid_token" and a short, fixed error_description;
//   - a valid token that lacks a required scope: 403, WWW-Authenticate:
//     Bearer error="insufficient_scope", scope="<the required scopes>"
//     (RFC 6750 §3.1).
func (a *AccessTokenAuthorizer) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var t *AccessToken
		var err error
		values := r.Header.Values("Authorization")
		switch len(values) {
		case 0:
			err = ErrNoToken
		case 1:
			t, err = a.Authenticate(values[0], tlsPeer(r))
		default:
			err = errMultipleHeaders
		}
		if err != nil {
			a.refuseHTTP(w, r, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(WithAccessToken(r.Context(), t)))
	})
}

func tlsPeer(r *http.Request) *x509.Certificate {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil
	}
	return r.TLS.PeerCertificates[0]
}

func (a *AccessTokenAuthorizer) refuseHTTP(w http.ResponseWriter, r *http.Request, err error) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	switch {
	case errors.Is(err, ErrInsufficientScope):
		a.log.Debug("request refused: insufficient scope", slog.String("path", r.URL.Path), slog.String(logkey.Reason, err.Error()))
		h.Set("WWW-Authenticate", fmt.Sprintf(`Bearer error="insufficient_scope", scope="%s"`, strings.Join(a.scopes, " ")))
		http.Error(w, "insufficient scope", http.StatusForbidden)
	case errors.Is(err, ErrNoToken):
		a.log.Debug("request refused: no bearer token", slog.String("path", r.URL.Path))
		h.Set("WWW-Authenticate", challengeNoToken)
		http.Error(w, "an access token is required", http.StatusUnauthorized)
	default:
		a.log.Debug("request refused: invalid access token", slog.String("path", r.URL.Path), slog.String(logkey.Reason, err.Error()))
		h.Set("WWW-Authenticate", fmt.Sprintf(challengeInvalid, describeAccess(err)))
		http.Error(w, describeAccess(err), http.StatusUnauthorized)
	}
}

// describeAccess is describe for access tokens: revoked and wrongly bound
// tokens are "invalid token", like any other, so that the answer says no
// more than RFC 6750 asks.
func describeAccess(err error) string {
	switch {
	case errors.Is(err, jwtsvid.ErrExpired):
		return "token expired"
	case errors.Is(err, jwtsvid.ErrAudience):
		return "audience mismatch"
	default:
		return "invalid token"
	}
}

// UnaryServerInterceptor returns an interceptor that authenticates each
// call by the bearer access token of its "authorization" metadata, with
// the TLS client certificate of its connection, and calls the handler
// with the token in the context (AccessTokenFrom). No, malformed,
// invalid, revoked or wrongly bound tokens fail the call with
// Unauthenticated; a missing scope, with PermissionDenied.
func (a *AccessTokenAuthorizer) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		t, err := a.authenticateGRPC(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return handler(WithAccessToken(ctx, t), req)
	}
}

// StreamServerInterceptor is UnaryServerInterceptor for streaming calls:
// the check runs once, when the stream opens.
func (a *AccessTokenAuthorizer) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		t, err := a.authenticateGRPC(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, &callerStream{ServerStream: ss, ctx: WithAccessToken(ss.Context(), t)})
	}
}

func (a *AccessTokenAuthorizer) authenticateGRPC(ctx context.Context, method string) (*AccessToken, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	values := md.Get(authorizationKey)
	var (
		t   *AccessToken
		err error
	)
	switch len(values) {
	case 0:
		err = ErrNoToken
	case 1:
		t, err = a.Authenticate(values[0], grpcPeerCert(ctx))
	default:
		err = errMultipleHeaders
	}
	switch {
	case err == nil:
		return t, nil
	case errors.Is(err, ErrInsufficientScope):
		a.log.Debug("call refused: insufficient scope", slog.String("method", method), slog.String(logkey.Reason, err.Error()))
		return nil, status.Error(codes.PermissionDenied, "insufficient scope")
	case errors.Is(err, ErrNoToken):
		a.log.Debug("call refused: no bearer token", slog.String("method", method))
		return nil, status.Error(codes.Unauthenticated, "an access token is required")
	default:
		a.log.Debug("call refused: invalid access token", slog.String("method", method), slog.String(logkey.Reason, err.Error()))
		return nil, status.Error(codes.Unauthenticated, describeAccess(err))
	}
}

func grpcPeerCert(ctx context.Context) *x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return nil
	}
	return info.State.PeerCertificates[0]
}
