package admin

import (
	"context"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/internal/peercred"

	"writ.dev/writ/internal/logkey"
)

// rule is the policy of one method.
type rule struct {
	// public methods may be called by anyone who can reach the socket,
	// with or without peer credentials.
	public bool
	// mutation methods change state; every call is audit-logged.
	mutation bool
	// secret methods hand out private keys: only root and the server's
	// own uid may call them (not the uids of Config.AllowedUIDs), and every
	// call is audit-logged.
	secret bool
}

// rules maps each method, by its canonical full name, to its policy. A
// method that is not here is refused, whatever else is registered on the
// server.
var rules = map[string]rule{
	adminv1.EntryService_BatchCreateEntry_FullMethodName:   {mutation: true},
	adminv1.EntryService_GetEntry_FullMethodName:           {},
	adminv1.EntryService_ListEntries_FullMethodName:        {},
	adminv1.EntryService_UpdateEntry_FullMethodName:        {mutation: true},
	adminv1.EntryService_DeleteEntry_FullMethodName:        {mutation: true},
	adminv1.EntryService_ListTemplateIssued_FullMethodName: {},

	adminv1.AgentService_ListAgents_FullMethodName: {},
	adminv1.AgentService_GetAgent_FullMethodName:   {},
	adminv1.AgentService_EvictAgent_FullMethodName: {mutation: true},
	adminv1.AgentService_BanAgent_FullMethodName:   {mutation: true},
	adminv1.AgentService_UnbanAgent_FullMethodName: {mutation: true},

	adminv1.JoinTokenService_GenerateJoinToken_FullMethodName: {mutation: true},

	adminv1.BundleService_GetBundle_FullMethodName:             {},
	adminv1.BundleService_SetFederatedBundle_FullMethodName:    {mutation: true},
	adminv1.BundleService_ListFederatedBundles_FullMethodName:  {},
	adminv1.BundleService_DeleteFederatedBundle_FullMethodName: {mutation: true},

	adminv1.FederationService_CreateFederation_FullMethodName:  {mutation: true},
	adminv1.FederationService_UpdateFederation_FullMethodName:  {mutation: true},
	adminv1.FederationService_GetFederation_FullMethodName:     {},
	adminv1.FederationService_ListFederations_FullMethodName:   {},
	adminv1.FederationService_DeleteFederation_FullMethodName:  {mutation: true},
	adminv1.FederationService_RefreshFederation_FullMethodName: {mutation: true},

	adminv1.OAuthService_CreateOAuthClient_FullMethodName: {mutation: true},
	adminv1.OAuthService_UpdateOAuthClient_FullMethodName: {mutation: true},
	adminv1.OAuthService_GetOAuthClient_FullMethodName:    {},
	adminv1.OAuthService_ListOAuthClients_FullMethodName:  {},
	adminv1.OAuthService_DeleteOAuthClient_FullMethodName: {mutation: true},
	adminv1.OAuthService_RevokeOAuthTokens_FullMethodName: {mutation: true},

	adminv1.ServerService_ListServers_FullMethodName:   {},
	adminv1.ServerService_Backup_FullMethodName:        {secret: true},
	adminv1.CAService_ListAuthorities_FullMethodName:   {},
	adminv1.CAService_PrepareAuthority_FullMethodName:  {mutation: true},
	adminv1.CAService_ActivateAuthority_FullMethodName: {mutation: true},
	adminv1.CAService_TaintAuthority_FullMethodName:    {mutation: true},
	adminv1.CAService_RevokeAuthority_FullMethodName:   {mutation: true},
	adminv1.CAService_Rotate_FullMethodName:            {mutation: true},

	healthpb.Health_Check_FullMethodName: {public: true},
	healthpb.Health_Watch_FullMethodName: {public: true},
}

// call is what the interceptor learned about one authorized call, and
// what the handler adds for the audit log. A call belongs to the one
// goroutine that runs the interceptor and, inside it, the handler, so it
// needs no lock.
type call struct {
	method  string
	rule    rule
	cred    peercred.Cred
	hasCred bool
	// remote calls come over the mTLS listener: callerID is the caller's
	// verified SPIFFE ID (zero if it did not verify), peerAddr its
	// network address.
	remote   bool
	callerID spiffeid.ID
	peerAddr string
	// reason says why a call was refused (logged, never sent).
	reason string

	// spiffeID and entryID name what a mutation acted on, once parsed.
	spiffeID string
	entryID  string
	// keyKind and keyID name the CA key a CAService mutation acted on
	// (Rotate: the keys it activated, comma-separated); forced is set if
	// the caller forced it.
	keyKind string
	keyID   string
	forced  bool
	// jti names the access token a revocation acted on.
	jti string
	// items, if any, replace the call's single audit record with one per
	// item (BatchCreateEntry).
	items []auditItem
}

type callKey struct{}

// begin returns the call that the interceptor authorized. Handlers call it
// first, so that a server built without the interceptors refuses every
// admin call instead of serving them unchecked.
func (s *Service) begin(ctx context.Context) (*call, error) {
	c, ok := ctx.Value(callKey{}).(*call)
	if !ok || c == nil {
		s.log.LogAttrs(ctx, slog.LevelError, "admin call refused: the admin interceptors are not installed")
		return nil, status.Error(codes.PermissionDenied, "permission denied")
	}
	return c, nil
}

// UnaryInterceptor returns the interceptor that authorizes and audits
// unary calls. Install it on the server the Service is registered with.
func (s *Service) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return s.unaryInterceptor(s.authorize)
}

// authorizer decides whether the caller of ctx may call method.
type authorizer func(ctx context.Context, method string) (*call, error)

func (s *Service) unaryInterceptor(authorize authorizer) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() { s.count(info.FullMethod, err) }()
		c, err := authorize(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		resp, err = handler(context.WithValue(ctx, callKey{}, c), req)
		s.finish(ctx, c, err)
		return resp, err
	}
}

// StreamInterceptor returns the interceptor that authorizes and audits
// streaming calls. Install it on the server the Service is registered
// with.
func (s *Service) StreamInterceptor() grpc.StreamServerInterceptor {
	return s.streamInterceptor(s.authorize)
}

func (s *Service) streamInterceptor(authorize authorizer) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		defer func() { s.count(info.FullMethod, err) }()
		ctx := ss.Context()
		c, err := authorize(ctx, info.FullMethod)
		if err != nil {
			return err
		}
		err = handler(srv, &callStream{ServerStream: ss, ctx: context.WithValue(ctx, callKey{}, c)})
		s.finish(ctx, c, err)
		return err
	}
}

// count records a finished call in the metrics. Methods without an
// access policy count as "other", so that the label stays bounded.
func (s *Service) count(method string, err error) {
	if _, known := rules[method]; !known {
		method = "other"
	}
	s.metrics.AdminCall(method, status.Code(err).String())
}

// callStream is a ServerStream whose context carries the call.
type callStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (cs *callStream) Context() context.Context { return cs.ctx }

// authorize decides whether the caller may call method, and logs a
// refusal.
func (s *Service) authorize(ctx context.Context, method string) (*call, error) {
	r, known := rules[method]
	cred, hasCred := peercred.FromContext(ctx)
	c := &call{method: method, rule: r, cred: cred, hasCred: hasCred}
	var err error
	switch {
	case !known:
		err = status.Error(codes.PermissionDenied, "permission denied: method has no access policy")
	case r.public:
		return c, nil
	case !hasCred:
		err = status.Error(codes.PermissionDenied, "permission denied: caller's peer credentials are unknown")
	case !s.allowed[cred.UID]:
		err = status.Errorf(codes.PermissionDenied, "permission denied: uid %d may not call the admin API", cred.UID)
	case r.secret && cred.UID != 0 && cred.UID != s.self:
		err = status.Errorf(codes.PermissionDenied, "permission denied: only root and the server's uid may call %s", method)
	default:
		return c, nil
	}
	if r.mutation || r.secret {
		s.audit(ctx, c, codes.PermissionDenied, "", "")
	} else {
		attrs := append(callerAttrs(c), slog.String(logkey.Code, codes.PermissionDenied.String()))
		s.log.LogAttrs(ctx, slog.LevelWarn, "admin call denied", attrs...)
	}
	return nil, err
}

// maxLoggedMethod bounds how much of an unknown method name, which the
// caller chose, goes into the log.
const maxLoggedMethod = 256

// callerAttrs returns the method and the caller: the uid and pid of a
// local caller, the SPIFFE ID and address of a remote one.
func callerAttrs(c *call) []slog.Attr {
	method := c.method
	if _, known := rules[method]; !known {
		if len(method) > maxLoggedMethod {
			method = method[:maxLoggedMethod] + "..."
		}
		method = entry.Printable(method)
	}
	attrs := []slog.Attr{slog.String(logkey.Method, method)}
	if c.hasCred {
		attrs = append(attrs, slog.Uint64(logkey.UID, uint64(c.cred.UID)), slog.Int(logkey.PID, int(c.cred.PID)))
	}
	if c.remote {
		if !c.callerID.IsZero() {
			attrs = append(attrs, slog.String(logkey.CallerID, c.callerID.String()))
		}
		if c.peerAddr != "" {
			attrs = append(attrs, slog.String(logkey.Peer, c.peerAddr))
		}
	}
	if c.reason != "" {
		attrs = append(attrs, slog.String(logkey.Reason, c.reason))
	}
	return attrs
}
