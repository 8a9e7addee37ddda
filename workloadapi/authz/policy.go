package authz

import (
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// ErrNotAllowed: the caller (or server) was authenticated, but the policy
// does not allow its SPIFFE ID.
var ErrNotAllowed = errors.New("authz: SPIFFE ID not allowed")

// Policy decides which authenticated SPIFFE IDs may call (or be called).
// Allows must be safe for concurrent use and cheap: it runs on every
// request and handshake. A zero ID is never allowed by the policies of
// this package.
type Policy interface {
	Allows(id spiffeid.ID) bool
}

// PolicyFunc adapts a function to a Policy.
type PolicyFunc func(id spiffeid.ID) bool

// Allows calls f.
func (f PolicyFunc) Allows(id spiffeid.ID) bool { return f(id) }

// idsPolicy allows exactly the IDs it holds.
type idsPolicy struct{ ids []spiffeid.ID }

// IDs allows exactly the given SPIFFE IDs (compared whole: trust domain
// and path). Zero IDs are ignored; IDs() allows nothing.
func IDs(ids ...spiffeid.ID) Policy {
	p := &idsPolicy{}
	for _, id := range ids {
		if !id.IsZero() && !slices.Contains(p.ids, id) {
			p.ids = append(p.ids, id)
		}
	}
	return p
}

func (p *idsPolicy) Allows(id spiffeid.ID) bool {
	return !id.IsZero() && slices.Contains(p.ids, id)
}

func (p *idsPolicy) String() string {
	s := make([]string, len(p.ids))
	for i, id := range p.ids {
		s[i] = id.String()
	}
	return "IDs(" + strings.Join(s, ", ") + ")"
}

// tdPolicy allows every workload of one trust domain.
type tdPolicy struct{ td spiffeid.TrustDomain }

// TrustDomain allows every SPIFFE ID with a path in trust domain td. The
// ID of the trust domain itself (spiffe://td, no path) is not a workload
// and is not allowed; a zero td allows nothing.
func TrustDomain(td spiffeid.TrustDomain) Policy { return tdPolicy{td: td} }

func (p tdPolicy) Allows(id spiffeid.ID) bool {
	return !p.td.IsZero() && id.MemberOf(p.td) && id.Path() != ""
}

func (p tdPolicy) String() string { return "TrustDomain(" + p.td.Name() + ")" }

// prefixPolicy allows a path and everything below it, in one trust domain.
type prefixPolicy struct {
	td     spiffeid.TrustDomain
	prefix string // a valid, non-empty SPIFFE ID path
}

// PathPrefix allows the SPIFFE IDs of trust domain td whose path is prefix
// or lies below it, segment by segment: "/ns/prod" allows /ns/prod and
// /ns/prod/web, not /ns/production. prefix must be a canonical, non-empty
// SPIFFE ID path ("/ns/prod": no trailing slash, no empty, "." or ".."
// segments); to allow a whole trust domain use TrustDomain. Nothing is
// normalized: an invalid prefix is an error.
func PathPrefix(td spiffeid.TrustDomain, prefix string) (Policy, error) {
	if td.IsZero() {
		return nil, errors.New("authz: path prefix policy: no trust domain")
	}
	if prefix == "" {
		return nil, errors.New("authz: path prefix policy: empty prefix (use TrustDomain to allow a whole trust domain)")
	}
	if err := spiffeid.ValidatePath(prefix); err != nil {
		return nil, fmt.Errorf("authz: path prefix policy: prefix %q: %w", prefix, err)
	}
	return prefixPolicy{td: td, prefix: prefix}, nil
}

// MustPathPrefix is PathPrefix for constant prefixes: it panics on an
// invalid one.
func MustPathPrefix(td spiffeid.TrustDomain, prefix string) Policy {
	p, err := PathPrefix(td, prefix)
	if err != nil {
		panic(err)
	}
	return p
}

func (p prefixPolicy) Allows(id spiffeid.ID) bool {
	if !id.MemberOf(p.td) {
		return false
	}
	rest, ok := strings.CutPrefix(id.Path(), p.prefix)
	return ok && (rest == "" || rest[0] == '/')
}

func (p prefixPolicy) String() string {
	return "PathPrefix(" + p.td.Name() + ", " + p.prefix + ")"
}

// anyPolicy allows what any of its policies allows.
type anyPolicy []Policy

// Any allows an ID if at least one of ps allows it. Any() allows nothing;
// nil policies are ignored.
func Any(ps ...Policy) Policy {
	out := make(anyPolicy, 0, len(ps))
	for _, p := range ps {
		if p != nil {
			out = append(out, p)
		}
	}
	return out
}

func (ps anyPolicy) Allows(id spiffeid.ID) bool {
	for _, p := range ps {
		if p.Allows(id) {
			return true
		}
	}
	return false
}

func (ps anyPolicy) String() string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = fmt.Sprint(p)
	}
	return "Any(" + strings.Join(s, ", ") + ")"
}

// allows reports whether p allows id; a nil policy allows nothing.
func allows(p Policy, id spiffeid.ID) error {
	if p == nil || id.IsZero() || !p.Allows(id) {
		return fmt.Errorf("%w: %s", ErrNotAllowed, id)
	}
	return nil
}

// TLSAuthorizer adapts p to go-spiffe's tlsconfig.Authorizer, for use with
// go-spiffe's own TLS helpers (spiffetls, grpccredentials). Prefer this
// package's ServerTLSConfig and ClientTLSConfig, which also check resumed
// sessions. The error wraps ErrNotAllowed.
func TLSAuthorizer(p Policy) tlsconfig.Authorizer {
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		return allows(p, id)
	}
}
