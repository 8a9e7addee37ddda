package workloadapi

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/grpc"

	"writ.dev/writ/ca/entry"
)

// Caller is the process at the other end of a call on the socket,
// attested by the connection it called on: services registered with
// RegisterService identify their callers with Server.Attest exactly as
// the Workload API does, sharing its one attestation per connection.
type Caller struct {
	s  *Server
	st *connState
	// Selectors are the caller's selectors, computed on its connection's
	// first call. They must not be modified.
	Selectors []entry.Selector
}

// Attest identifies the caller of the call whose context is ctx, a call
// on this Server's socket: the process pinned when its connection was
// accepted, confirmed unchanged. It fails with the gRPC status the
// Workload API answers (PermissionDenied "no identity issued"; the
// detail goes to the debug log), which a handler returns as it is.
func (s *Server) Attest(ctx context.Context) (*Caller, error) {
	st, sel, err := s.attest(ctx)
	if err != nil {
		return nil, err
	}
	return &Caller{s: s, st: st, Selectors: sel}, nil
}

// Check confirms, before a stream sends after a wait, that the caller is
// still the process that connected; it fails like Attest.
func (c *Caller) Check() error { return c.s.check(c.st) }

// Refused logs at debug level, with the caller's pid and uid, why it was
// refused, and returns the status to answer: PermissionDenied "no
// identity issued", or Unavailable before the agent has its entries
// (Config.Synced).
func (c *Caller) Refused(reason string) error {
	c.s.logRefused(c.st, reason, nil)
	return c.s.unentitled()
}

// RegisterService registers a gRPC service to be served on the socket
// beside the Workload API; it implements grpc.ServiceRegistrar, so that
// generated Register functions take the Server. It must be called before
// Run, and panics afterwards (a programming error). The service's calls
// share the Workload API's connections, limits and attestation (Attest),
// and must carry the security header as Workload API calls do (clients
// dial with SecurityHeaderDialOptions).
func (s *Server) RegisterService(desc *grpc.ServiceDesc, impl any) {
	s.register(desc, impl, false)
}

// HeaderExempt returns a grpc.ServiceRegistrar that registers services
// as RegisterService does, except that their calls need not carry the
// security header: only for clients that cannot send it, such as Envoy's
// secret discovery service.
func (s *Server) HeaderExempt() grpc.ServiceRegistrar { return exemptRegistrar{s} }

type exemptRegistrar struct{ s *Server }

func (r exemptRegistrar) RegisterService(desc *grpc.ServiceDesc, impl any) {
	r.s.register(desc, impl, true)
}

func (s *Server) register(desc *grpc.ServiceDesc, impl any, exempt bool) {
	if s.running.Load() {
		panic(fmt.Sprintf("workloadapi: RegisterService(%s) after Run", desc.ServiceName))
	}
	s.extra = append(s.extra, registration{desc: desc, impl: impl, headerExempt: exempt})
}

// registration is a service registered with RegisterService or
// HeaderExempt.
type registration struct {
	desc         *grpc.ServiceDesc
	impl         any
	headerExempt bool
}

// headerExempt reports whether fullMethod ("/pkg.Service/Method") is a
// method of a service registered with HeaderExempt.
func (s *Server) headerExempt(fullMethod string) bool {
	for _, r := range s.extra {
		if !r.headerExempt {
			continue
		}
		name, ok := strings.CutPrefix(fullMethod, "/"+r.desc.ServiceName+"/")
		if ok && name != "" && !strings.Contains(name, "/") {
			return true
		}
	}
	return false
}

// unaryHeader and streamHeader check the security header of every call
// but those of services registered with HeaderExempt.
func (s *Server) unaryHeader(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if s.headerExempt(info.FullMethod) {
		return handler(ctx, req)
	}
	return unaryHeaderCheck(ctx, req, info, handler)
}

func (s *Server) streamHeader(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if s.headerExempt(info.FullMethod) {
		return handler(srv, ss)
	}
	return streamHeaderCheck(srv, ss, info, handler)
}

// Stopping is closed when Run begins to stop: registered services end
// their streams then, as the Workload API's do.
func (s *Server) Stopping() <-chan struct{} { return s.stopping }
