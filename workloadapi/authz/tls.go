package authz

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"writ.dev/writ/ca/x509ca"
)

// ErrUnauthenticated: the peer presented no certificate, or one that is
// not an X.509-SVID verifying to the bundle of its trust domain.
var ErrUnauthenticated = errors.New("authz: peer not authenticated")

// X509Source supplies this workload's X.509-SVID and the X.509 bundles
// that verify peers: go-spiffe's *workloadapi.X509Source.
type X509Source interface {
	x509svid.Source
	x509bundle.Source
}

// Clock tells the time; writ's ca/clock.Clock satisfies it.
type Clock interface {
	Now() time.Time
}

// Option configures the TLS helpers and NewJWTAuthorizer.
type Option func(*options)

type options struct {
	clock Clock
}

// WithClock makes certificate verification (and tls.Config.Time) use c
// instead of the system clock.
func WithClock(c Clock) Option {
	return func(o *options) {
		if c != nil {
			o.clock = c
		}
	}
}

func newOptions(opts []Option) *options {
	o := &options{}
	for _, opt := range opts {
		opt(o)
	}
	return o
}

func (o *options) now() time.Time {
	if o.clock == nil {
		return time.Now()
	}
	return o.clock.Now()
}

// ServerTLSConfig returns the TLS configuration of an mTLS server: it
// presents the current X.509-SVID of src on every handshake (rotation
// needs no restart) and requires a client X.509-SVID that verifies to
// src's bundle for the client's trust domain and whose SPIFFE ID policy
// allows. The check runs on every handshake, resumed sessions included
// (see the package documentation). TLS 1.2 is the minimum.
func ServerTLSConfig(src X509Source, policy Policy, opts ...Option) *tls.Config {
	o := newOptions(opts)
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		ClientAuth:     tls.RequireAnyClientCert,
		GetCertificate: tlsconfig.GetCertificate(src),
		// VerifyPeerCertificate is not called on resumed sessions;
		// VerifyConnection is called on every handshake.
		VerifyConnection: verifyPeer(src, policy, o),
		Time:             o.now,
	}
}

// ClientTLSConfig returns the TLS configuration of an mTLS client: it
// presents the current X.509-SVID of src and requires a server X.509-SVID
// that verifies to src's bundle for the server's trust domain and whose
// SPIFFE ID policy allows, on every handshake, resumed sessions included.
// The server's SPIFFE ID takes the place of its host name: no DNS name is
// checked.
func ClientTLSConfig(src X509Source, policy Policy, opts ...Option) *tls.Config {
	o := newOptions(opts)
	return &tls.Config{
		MinVersion:           tls.VersionTLS12,
		GetClientCertificate: tlsconfig.GetClientCertificate(src),
		// Go's verification wants a host name in the certificate; the
		// SPIFFE verification in VerifyConnection replaces it.
		InsecureSkipVerify: true, //nolint:gosec // G402: verified in VerifyConnection
		VerifyConnection:   verifyPeer(src, policy, o),
		Time:               o.now,
	}
}

// ServerTLSConfigNoClientCert returns the TLS configuration of a server
// that authenticates itself with the X.509-SVID of svid and asks the
// client for no certificate: for endpoints whose callers authenticate
// otherwise, such as with JWT-SVIDs (JWTAuthorizer).
func ServerTLSConfigNoClientCert(svid x509svid.Source, opts ...Option) *tls.Config {
	o := newOptions(opts)
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: tlsconfig.GetCertificate(svid),
		Time:           o.now,
	}
}

// ClientTLSConfigNoClientCert returns the TLS configuration of a client
// that presents no certificate and authenticates the server as
// ClientTLSConfig does: an X.509-SVID verifying to bundles, with a SPIFFE
// ID that policy allows, on every handshake.
func ClientTLSConfigNoClientCert(bundles x509bundle.Source, policy Policy, opts ...Option) *tls.Config {
	o := newOptions(opts)
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, //nolint:gosec // G402: verified in VerifyConnection
		VerifyConnection:   verifyPeer(bundles, policy, o),
		Time:               o.now,
	}
}

// verifyPeer returns a VerifyConnection callback that verifies the peer's
// chain as an X.509-SVID against the bundle of the peer ID's own trust
// domain, at o's time, with writ's strict verifier (x509ca.VerifyX509SVID),
// then authorizes the ID. On a resumed session the chain is the one
// verified when the session was created, checked again against today's
// bundle, time and policy.
func verifyPeer(bundles x509bundle.Source, policy Policy, o *options) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		_, err := verifyChain(cs, bundles, policy, o.now())
		return err
	}
}

func verifyChain(cs tls.ConnectionState, bundles x509bundle.Source, policy Policy, now time.Time) (spiffeid.ID, error) {
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, fmt.Errorf("%w: no certificate", ErrUnauthenticated)
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	if bundles == nil {
		return spiffeid.ID{}, fmt.Errorf("%w: no bundle source", ErrUnauthenticated)
	}
	b, err := bundles.GetX509BundleForTrustDomain(id.TrustDomain())
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	if b == nil || b.TrustDomain() != id.TrustDomain() {
		return spiffeid.ID{}, fmt.Errorf("%w: no bundle for trust domain %q", ErrUnauthenticated, id.TrustDomain().Name())
	}
	if _, err := x509ca.VerifyX509SVID(cs.PeerCertificates, b.X509Authorities(), now); err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	if err := allows(policy, id); err != nil {
		return spiffeid.ID{}, err
	}
	return id, nil
}

// PeerID returns the SPIFFE ID of the peer's X.509-SVID on a connection
// (for HTTP handlers: PeerID(r.TLS)). It parses the certificate and
// verifies nothing: use it only on connections made with ServerTLSConfig,
// ClientTLSConfig or ClientTLSConfigNoClientCert, which verified and
// authorized that certificate.
func PeerID(cs *tls.ConnectionState) (spiffeid.ID, error) {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, fmt.Errorf("%w: no certificate", ErrUnauthenticated)
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	return id, nil
}

// GRPCPeerID returns the SPIFFE ID of the X.509-SVID of the gRPC peer of
// ctx (a server handler's or interceptor's context), when the server's
// credentials are credentials.NewTLS(ServerTLSConfig(...)). Like PeerID it
// verifies nothing itself.
func GRPCPeerID(ctx context.Context) (spiffeid.ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, fmt.Errorf("%w: no gRPC peer in the context", ErrUnauthenticated)
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return spiffeid.ID{}, fmt.Errorf("%w: the gRPC connection is not TLS", ErrUnauthenticated)
	}
	return PeerID(&info.State)
}
