package main

// Remote administration: with --admin-address HOST:PORT an admin command
// calls a server's remote admin API (writ server run
// --admin-bind-address) instead of its admin socket. The command takes
// this process's X.509-SVID (the first, or --admin-spiffe-id's) and the
// trust bundle from the local agent's Workload API (--socket-path, else
// $SPIFFE_ENDPOINT_SOCKET, else the agent's default socket), presents the
// SVID as its client certificate over TLS 1.3, and accepts only a server
// certificate that is an X.509-SVID of spiffe://<its own trust
// domain>/writ/server (or --admin-server-id). Nothing is read from or
// written to disk.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"writ.dev/writ/ca/entry"
)

// remoteAdmin is where and how an admin command reaches a remote admin
// API.
type remoteAdmin struct {
	address string
	// workloadSocket is the Workload API socket (absolute path).
	workloadSocket string
	// checkSocket: workloadSocket is a default (see workloadCmd).
	checkSocket bool
	// serverID, if set, is the SPIFFE ID the server must present.
	serverID spiffeid.ID
	// id, if set, chooses which of this process's SVIDs to present.
	id spiffeid.ID
}

// newRemoteAdmin checks the remote admin flags.
func newRemoteAdmin(c *cli.Context) (*remoteAdmin, error) {
	addr := c.String(flagAdminAddress)
	if addr == "" {
		return nil, usagef(c, "--%s is empty", flagAdminAddress)
	}
	if host, port, err := net.SplitHostPort(addr); err != nil || host == "" || port == "" {
		return nil, usagef(c, "--%s %q: want HOST:PORT", flagAdminAddress, addr)
	}
	if c.IsSet(flagAdminSocket) {
		return nil, usagef(c, "give --%s or --%s (or $%s), not both", flagAdminSocket, flagAdminAddress, adminAddressEnv)
	}
	socket, isDefault, err := workloadSocket(c)
	if err != nil {
		return nil, err
	}
	r := &remoteAdmin{address: addr, workloadSocket: socket, checkSocket: isDefault}
	if c.IsSet(flagAdminServerID) {
		if r.serverID, err = entry.ParseID(c.String(flagAdminServerID)); err != nil {
			return nil, usagef(c, "--%s: %v", flagAdminServerID, err)
		}
	}
	if c.IsSet(flagAdminSPIFFEID) {
		if r.id, err = entry.ParseID(c.String(flagAdminSPIFFEID)); err != nil {
			return nil, usagef(c, "--%s: %v", flagAdminSPIFFEID, err)
		}
	}
	return r, nil
}

// dial fetches this process's X.509-SVID and bundles from the Workload
// API and returns a client of the remote admin API that authenticates
// with them. The connection is made by the first call.
func (r *remoteAdmin) dial(ctx context.Context, timeout time.Duration) (*adminClient, error) {
	w := &workloadCmd{socket: r.workloadSocket, checkSocket: r.checkSocket, timeout: timeout}
	wc, err := w.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer wc.Close()
	fctx, cancel := wc.callContext(ctx)
	defer cancel()
	x509ctx, err := wc.FetchX509Context(fctx)
	if err != nil {
		return nil, fmt.Errorf("--%s needs this process's X.509-SVID: %w", flagAdminAddress, wc.callError(err))
	}
	svid := x509ctx.DefaultSVID()
	if !r.id.IsZero() {
		svid = nil
		var ids []string
		for _, s := range x509ctx.SVIDs {
			if !slices.Contains(ids, s.ID.String()) {
				ids = append(ids, s.ID.String())
			}
			if s.ID == r.id && svid == nil {
				svid = s
			}
		}
		if svid == nil {
			return nil, fmt.Errorf("--%s %s: this process (uid %d) has no X.509-SVID of that ID, only %s", flagAdminSPIFFEID, r.id, os.Geteuid(), strings.Join(ids, ", "))
		}
	}
	if svid == nil {
		return nil, fmt.Errorf("--%s needs this process's X.509-SVID: the Workload API at %s gave none (uid %d)", flagAdminAddress, r.workloadSocket, os.Geteuid())
	}
	serverID := r.serverID
	if serverID.IsZero() {
		serverID = entry.ServerID(svid.ID.TrustDomain())
	}
	conf := tlsconfig.MTLSClientConfig(svid, x509ctx.Bundles, tlsconfig.AuthorizeID(serverID))
	conf.MinVersion = tls.VersionTLS13

	rc := &remoteConn{address: r.address, id: svid.ID, serverID: serverID}
	dialer := func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			rc.mu.Lock()
			rc.dialErr = err
			rc.mu.Unlock()
		}
		return conn, err
	}
	conn, err := grpc.NewClient("passthrough:///"+r.address,
		grpc.WithTransportCredentials(credentials.NewTLS(conf)),
		grpc.WithContextDialer(dialer),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(maxAdminMessageSize),
			grpc.MaxCallSendMsgSize(maxAdminMessageSize),
		),
	)
	if err != nil {
		return nil, fmt.Errorf("remote admin API %s: %w", r.address, err)
	}
	c := &adminClient{timeout: timeout, remote: rc}
	c.setConn(conn)
	return c, nil
}

// remoteConn describes a connection to a remote admin API, for error
// messages.
type remoteConn struct {
	address  string
	id       spiffeid.ID // this process's
	serverID spiffeid.ID

	mu sync.Mutex // guards dialErr
	// dialErr is the last error connecting to the address.
	dialErr error
}

// callError turns the status of a failed call into what the user needs
// to know: whether the server could not be reached, refused the
// handshake, or refused the caller.
func (rc *remoteConn) callError(st *status.Status, timeout time.Duration) error {
	switch st.Code() {
	case codes.Unavailable:
		rc.mu.Lock()
		dialErr := rc.dialErr
		rc.mu.Unlock()
		if dialErr != nil {
			if oe, ok := errors.AsType[*net.OpError](dialErr); ok && oe.Err != nil {
				dialErr = oe.Err
			}
			return &serverError{code: st.Code(), msg: fmt.Sprintf("cannot connect to the remote admin API at %s: %v", rc.address, dialErr)}
		}
		return &serverError{code: st.Code(), msg: fmt.Sprintf("no TLS connection to the remote admin API at %s as %s (expecting server %s): %s", rc.address, rc.id, rc.serverID, st.Message())}
	case codes.Unauthenticated:
		return &serverError{code: st.Code(), msg: fmt.Sprintf("the server at %s does not accept the X.509-SVID of %s: %s", rc.address, rc.id, st.Message())}
	case codes.PermissionDenied:
		msg := fmt.Sprintf("the server at %s refused %s: %s", rc.address, rc.id, st.Message())
		if st.Message() == "permission denied" {
			msg += " (remote admins are the server's --admin-id IDs and the SPIFFE IDs of entries created with --admin)"
		}
		return &serverError{code: st.Code(), msg: msg}
	case codes.DeadlineExceeded:
		return &serverError{code: st.Code(), msg: fmt.Sprintf("no answer from the server at %s within %s: %s", rc.address, timeout, st.Message())}
	}
	return &serverError{code: st.Code(), msg: st.Message()}
}
