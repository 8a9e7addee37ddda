package authz

import (
	"context"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

type callerKey struct{}

// CallerID returns the SPIFFE ID of the caller that JWTAuthorizer's
// middleware or interceptors authenticated and authorized for this
// request, and whether there is one.
func CallerID(ctx context.Context) (spiffeid.ID, bool) {
	id, ok := ctx.Value(callerKey{}).(spiffeid.ID)
	return id, ok && !id.IsZero()
}

// WithCallerID returns a copy of ctx carrying id as the caller, as the
// middleware does; for tests of handlers and for other authenticators.
func WithCallerID(ctx context.Context, id spiffeid.ID) context.Context {
	return context.WithValue(ctx, callerKey{}, id)
}
