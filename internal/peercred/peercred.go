package peercred

import (
	"context"
	"errors"
	"fmt"
	"net"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Cred is the identity of the process at the other end of a Unix socket,
// as the kernel recorded it when the connection was made.
type Cred struct {
	PID int32
	UID uint32
	GID uint32
}

// AuthType is the AuthType of the AuthInfo that TransportCredentials
// returns.
const AuthType = "peercred"

// AuthInfo is the gRPC auth info of a connection authenticated by peer
// credentials. Cred is the peer's: the client's on the server side, the
// server's on the client side.
type AuthInfo struct {
	credentials.CommonAuthInfo
	Cred Cred
}

// AuthType returns "peercred".
func (AuthInfo) AuthType() string { return AuthType }

// TransportCredentials returns gRPC transport credentials for a server or
// client on a Unix socket. The handshake sends nothing: it reads the
// peer's credentials from the kernel and fails, closing the connection, if
// the connection is not a Unix socket or they cannot be read. The
// credentials are then available to handlers through FromContext.
//
// Clients may use these credentials too, to learn who runs the server
// (see grpc.Peer), or plain insecure credentials.
func TransportCredentials() credentials.TransportCredentials {
	return transportCreds{}
}

// FromContext returns the peer credentials of the connection that carried
// the call whose context is ctx. It reports false if the call did not come
// over a connection set up by TransportCredentials.
func FromContext(ctx context.Context) (Cred, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return Cred{}, false
	}
	info, ok := p.AuthInfo.(AuthInfo)
	if !ok {
		return Cred{}, false
	}
	return info.Cred, true
}

// transportCreds is stateless: Clone returns it as is.
type transportCreds struct{}

func (transportCreds) ServerHandshake(rawConn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return handshake(rawConn)
}

func (transportCreds) ClientHandshake(_ context.Context, _ string, rawConn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return handshake(rawConn)
}

func handshake(rawConn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	// Only a *net.UnixConn: other sockets (TCP) answer SO_PEERCRED with
	// made-up credentials rather than an error, and wrapped connections
	// hide what they are.
	uc, ok := rawConn.(*net.UnixConn)
	if !ok {
		return nil, nil, fmt.Errorf("peercred: connection is a %T, not a Unix socket", rawConn)
	}
	cred, err := FromConn(uc)
	if err != nil {
		return nil, nil, err
	}
	return rawConn, AuthInfo{
		// The kernel carries the bytes; no one else on the host can read
		// or change them. gRPC's own local credentials say the same of
		// Unix sockets.
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		Cred:           cred,
	}, nil
}

func (transportCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: AuthType}
}

func (c transportCreds) Clone() credentials.TransportCredentials { return c }

// OverrideServerName is unused by gRPC and has nothing to override.
func (transportCreds) OverrideServerName(string) error { return nil }

// errClosed is returned for a connection that has no file descriptor.
var errClosed = errors.New("peercred: connection is closed")
