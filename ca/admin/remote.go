package admin

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/internal/logkey"
)

// Errors of remote callers' certificates. They are logged; the caller is
// told only that it is unauthenticated.
var (
	// ErrNoTrustBundle means the server has no local bundle yet, so no
	// client certificate verifies.
	ErrNoTrustBundle = errors.New("admin: no local trust bundle")
	// ErrNoClientCertificate means a remote caller sent no certificate.
	ErrNoClientCertificate = errors.New("admin: no client certificate")
	// ErrTaintedAuthority means a remote caller's X.509-SVID chains to a
	// tainted CA.
	ErrTaintedAuthority = errors.New("admin: client certificate chains to a tainted CA")
)

// Limits of the remote admin listener besides the message sizes, which
// are those of the admin socket (RecommendedMaxRecvMsgSize).
const (
	// RemoteHandshakeTimeout bounds the TLS handshake of a remote admin
	// connection.
	RemoteHandshakeTimeout = 10 * time.Second
	// RemoteMaxConcurrentStreams bounds the calls one remote admin
	// connection may have open at once.
	RemoteMaxConcurrentStreams = 100
)

// TrustSource is the server's current view of its trust domain's trust:
// the local bundle (nil if there is none) and the subject key IDs,
// lowercase hex, of the tainted X.509 CAs. nodeapi.Service is one, kept
// current from the datastore's change feed.
type TrustSource interface {
	LocalX509Trust() (*spiffebundle.Bundle, []string)
}

// checkRemoteConfig validates the remote admin settings of cfg.
func checkRemoteConfig(cfg *Config) (map[spiffeid.ID]bool, error) {
	ids := make(map[spiffeid.ID]bool, len(cfg.AdminIDs))
	for _, id := range cfg.AdminIDs {
		if id.TrustDomain() != cfg.TrustDomain {
			return nil, fmt.Errorf("admin: admin SPIFFE ID %q is not in trust domain %q", id.String(), cfg.TrustDomain.Name())
		}
		if id.Path() == "" {
			return nil, fmt.Errorf("admin: admin SPIFFE ID %q has no path", id.String())
		}
		if id == ServerID(cfg.TrustDomain) {
			return nil, fmt.Errorf("admin: admin SPIFFE ID %q is the servers' own ID", id.String())
		}
		if entry.IsReserved(id) {
			// Agents hold these IDs by attesting, without any entry: a
			// compromised agent would be an admin.
			return nil, fmt.Errorf("admin: admin SPIFFE ID %q is under %s/, reserved for Writ's agents and server", id.String(), entry.ReservedPath)
		}
		ids[id] = true
	}
	return ids, nil
}

// RemoteTLSConfig returns the TLS configuration of the remote admin
// listener: TLS 1.3 only, the server's X.509-SVID from getCertificate, a
// client certificate required, and a VerifyConnection (which also runs on
// resumed sessions) that refuses one that is not an X.509-SVID of the
// trust domain under the current bundle, or that chains to a tainted CA.
// It panics if the Service has no TrustSource (see Config.Trust).
func (s *Service) RemoteTLSConfig(getCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)) *tls.Config {
	if s.trust == nil {
		panic("admin: RemoteTLSConfig needs Config.Trust")
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: getCertificate,
		// The chain is verified in VerifyConnection, against the bundle
		// of the moment, by go-spiffe's X.509-SVID verifier.
		ClientAuth: tls.RequireAnyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if _, err := s.verifyRemote(cs.PeerCertificates); err != nil {
				s.log.Debug("remote admin client certificate refused", logkey.Reason, err.Error())
				return err
			}
			return nil
		},
		Time:       s.clock.Now,
		NextProtos: []string{"h2"},
	}
}

// RemoteServerOptions returns the options of the remote admin gRPC
// server: its TLS credentials (RemoteTLSConfig), the remote
// interceptors, and the admin socket's message size limits. Register the
// same services on it as on the admin socket.
func (s *Service) RemoteServerOptions(getCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(s.RemoteTLSConfig(getCertificate))),
		grpc.MaxRecvMsgSize(RecommendedMaxRecvMsgSize),
		grpc.MaxSendMsgSize(RecommendedMaxRecvMsgSize),
		grpc.ChainUnaryInterceptor(s.RemoteUnaryInterceptor()),
		grpc.ChainStreamInterceptor(s.RemoteStreamInterceptor()),
		grpc.ConnectionTimeout(RemoteHandshakeTimeout),
		grpc.MaxConcurrentStreams(RemoteMaxConcurrentStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 20 * time.Second, PermitWithoutStream: true}),
	}
}

// RemoteUnaryInterceptor returns the interceptor that authorizes and
// audits unary calls on the remote admin listener.
func (s *Service) RemoteUnaryInterceptor() grpc.UnaryServerInterceptor {
	return s.unaryInterceptor(s.authorizeRemote)
}

// RemoteStreamInterceptor returns the interceptor that authorizes and
// audits streaming calls on the remote admin listener.
func (s *Service) RemoteStreamInterceptor() grpc.StreamServerInterceptor {
	return s.streamInterceptor(s.authorizeRemote)
}

// verifyRemote verifies a client certificate chain against the current
// local bundle at the current time, with go-spiffe's X.509-SVID verifier,
// refuses one that goes through a tainted CA, and returns its SPIFFE ID.
func (s *Service) verifyRemote(chain []*x509.Certificate) (spiffeid.ID, error) {
	if len(chain) == 0 {
		return spiffeid.ID{}, ErrNoClientCertificate
	}
	b, tainted := s.trust.LocalX509Trust()
	if b == nil || b.TrustDomain() != s.td || len(b.X509Authorities()) == 0 {
		return spiffeid.ID{}, ErrNoTrustBundle
	}
	id, chains, err := x509svid.Verify(chain, b, x509svid.WithTime(s.clock.Now()))
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("verify client X.509-SVID: %w", err)
	}
	if len(tainted) > 0 {
		if slices.Contains(tainted, hex.EncodeToString(chain[0].AuthorityKeyId)) {
			return spiffeid.ID{}, ErrTaintedAuthority
		}
		for _, c := range chains {
			for _, cert := range c[1:] {
				if slices.Contains(tainted, hex.EncodeToString(cert.SubjectKeyId)) {
					return spiffeid.ID{}, ErrTaintedAuthority
				}
			}
		}
	}
	return id, nil
}

// isAdmin reports whether id may call the admin API: it is one of
// Config.AdminIDs, or the SPIFFE ID of an entry with Admin set. The
// entries are read from the store on each call, so that a deleted entry,
// or one whose Admin flag was cleared, grants nothing from the next call
// on, also through another server sharing the datastore.
func (s *Service) isAdmin(ctx context.Context, id spiffeid.ID) (bool, error) {
	if s.adminIDs[id] {
		return true, nil
	}
	entries, err := s.store.ListEntries(ctx, datastore.EntryFilter{SPIFFEID: id})
	if err != nil {
		return false, err
	}
	for _, e := range entries {
		if e.Admin && e.Template == "" && e.SPIFFEID == id {
			return true, nil
		}
	}
	return false, nil
}

// authorizeRemote decides whether the remote caller may call method, and
// logs a refusal. The caller's certificate is verified again on every
// call, against the bundle of the moment, so that a connection opened
// before a CA was tainted or removed from the bundle gets no further.
func (s *Service) authorizeRemote(ctx context.Context, method string) (*call, error) {
	r, known := rules[method]
	c := &call{method: method, rule: r, remote: true}
	p, _ := peer.FromContext(ctx)
	var chain []*x509.Certificate
	if p != nil {
		if p.Addr != nil {
			c.peerAddr = p.Addr.String()
		}
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			chain = info.State.PeerCertificates
		}
	}
	id, verr := s.verifyRemote(chain)
	if verr == nil {
		c.callerID = id
	}
	var err error
	var reason string
	switch {
	case verr != nil:
		reason = verr.Error()
		err = status.Error(codes.Unauthenticated, "unauthenticated")
	case !known:
		err = status.Error(codes.PermissionDenied, "permission denied: method has no access policy")
	case r.public:
		return c, nil
	default:
		ok, aerr := s.isAdmin(ctx, id)
		switch {
		case aerr != nil:
			s.log.LogAttrs(ctx, slog.LevelError, "cannot read the entries to authorize a remote admin call", append(callerAttrs(c), slog.String(logkey.Error, aerr.Error()))...)
			err = status.Error(codes.Unavailable, "cannot check the caller's authorization; try again")
		case !ok:
			reason = "not an admin SPIFFE ID"
			err = status.Error(codes.PermissionDenied, "permission denied")
		case r.secret:
			reason = "method is served on the local admin socket only"
			err = status.Errorf(codes.PermissionDenied, "permission denied: %s is served on the server's local admin socket only", method)
		default:
			return c, nil
		}
	}
	code := status.Code(err)
	c.reason = reason
	if r.mutation || r.secret {
		s.audit(ctx, c, code, "", "")
	} else {
		attrs := append(callerAttrs(c), slog.String(logkey.Code, code.String()))
		s.log.LogAttrs(ctx, slog.LevelWarn, "admin call denied", attrs...)
	}
	return nil, err
}
