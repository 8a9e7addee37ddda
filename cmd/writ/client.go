package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/internal/unixsock"
)

// Where the admin commands look for the admin socket by default: the
// server's default (defaultDataDir, in server.go) with the file name it
// uses (server.AdminSocket), or the same file in $WRIT_DATA_DIR.
const (
	adminSocketFile = "admin.sock"
	dataDirEnv      = "WRIT_DATA_DIR"
	adminSocketEnv  = "WRIT_ADMIN_SOCKET"
)

const (
	defaultAdminTimeout = 10 * time.Second
	// maxAdminMessageSize bounds every admin message sent or received.
	maxAdminMessageSize = 16 << 20
)

// Names of the flags every admin command takes.
const (
	flagAdminSocket   = "admin-socket"
	flagAdminAddress  = "admin-address"
	flagAdminServerID = "admin-server-id"
	flagAdminSPIFFEID = "admin-spiffe-id"
	flagOutput        = "output"
	flagTimeout       = "timeout"
)

// adminAddressEnv sets --admin-address.
const adminAddressEnv = "WRIT_ADMIN_ADDRESS"

// adminFlags returns the flags every admin command takes. Each command
// gets its own copies: urfave flags hold parsing state.
func adminFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{
			Name:        flagAdminSocket,
			Usage:       "`PATH` of the server's admin Unix socket",
			EnvVars:     []string{adminSocketEnv},
			DefaultText: "$" + dataDirEnv + "/" + adminSocketFile + ", else " + defaultDataDir + "/" + adminSocketFile,
			TakesFile:   true,
		},
		&cli.StringFlag{
			Name:    flagAdminAddress,
			Usage:   "`HOST:PORT` of a server's remote admin API (its --admin-bind-address), reached over mutual TLS with this process's X.509-SVID from the local Workload API, instead of the admin socket",
			EnvVars: []string{adminAddressEnv},
		},
		&cli.StringFlag{
			Name:        flagWorkloadSocket,
			Usage:       "with --" + flagAdminAddress + ": the local agent's Workload API socket, a `PATH` or unix:///absolute/path",
			DefaultText: workloadSocketDefaultText,
			TakesFile:   true,
		},
		&cli.StringFlag{
			Name:        flagAdminSPIFFEID,
			Usage:       "with --" + flagAdminAddress + ": present this process's X.509-SVID of SPIFFE `ID` (when it has several)",
			DefaultText: "the first the Workload API gives",
		},
		&cli.StringFlag{
			Name:        flagAdminServerID,
			Usage:       "with --" + flagAdminAddress + ": the SPIFFE `ID` the server must present",
			DefaultText: "spiffe://<trust domain of this process's SVID>/writ/server",
		},
		&cli.StringFlag{
			Name:  flagOutput,
			Value: "text",
			Usage: "output `FORMAT`: text or json",
		},
		&cli.DurationFlag{
			Name:  flagTimeout,
			Value: defaultAdminTimeout,
			Usage: "time limit (a `DURATION`) of each call to the server",
		},
	}
}

// withAdminFlags returns flags followed by the admin flags.
func withAdminFlags(flags ...cli.Flag) []cli.Flag {
	return append(flags, adminFlags()...)
}

// defaultAdminSocket is the admin socket used when neither --admin-socket
// nor WRIT_ADMIN_SOCKET is given.
func defaultAdminSocket() string {
	dir := os.Getenv(dataDirEnv)
	if dir == "" {
		dir = defaultDataDir
	}
	return filepath.Join(dir, adminSocketFile)
}

// adminCmd is what an admin command's action needs besides its own flags:
// where to write, in which format, and how to reach the server. It is
// built, and the common flags checked, before anything else is done.
type adminCmd struct {
	cli    *cli.Context
	format outputFormat
	socket string
	// checkSocket: socket is the relative default (neither the flag,
	// $WRIT_ADMIN_SOCKET nor $WRIT_DATA_DIR named it), which depends on
	// the working directory; it is dialed only if unixsock.CheckDial
	// accepts it.
	checkSocket bool
	timeout     time.Duration
	// remote, if set, replaces the socket: the server's remote admin API.
	remote *remoteAdmin
}

// newAdminCmd checks the flags common to admin commands and refuses
// positional arguments, which no admin command takes.
func newAdminCmd(c *cli.Context) (*adminCmd, error) {
	format, err := parseOutputFormat(c.String(flagOutput))
	if err != nil {
		return nil, usagef(c, "%v", err)
	}
	if c.Args().Present() {
		return nil, usagef(c, "unexpected argument %q", c.Args().First())
	}
	timeout := c.Duration(flagTimeout)
	if timeout <= 0 {
		return nil, usagef(c, "--%s must be positive", flagTimeout)
	}
	a := &adminCmd{cli: c, format: format, timeout: timeout}
	if c.IsSet(flagAdminAddress) {
		if a.remote, err = newRemoteAdmin(c); err != nil {
			return nil, err
		}
		return a, nil
	}
	for _, name := range []string{flagWorkloadSocket, flagAdminServerID, flagAdminSPIFFEID} {
		if c.IsSet(name) {
			return nil, usagef(c, "--%s is for --%s", name, flagAdminAddress)
		}
	}
	a.socket = c.String(flagAdminSocket)
	if a.socket == "" {
		a.socket = defaultAdminSocket()
		a.checkSocket = os.Getenv(dataDirEnv) == ""
	}
	return a, nil
}

// dial connects to the admin socket, or to the remote admin API. The
// connection is made lazily, by the first call; the remote one first
// fetches this process's X.509-SVID from the Workload API.
func (a *adminCmd) dial() (*adminClient, error) {
	if a.remote != nil {
		return a.remote.dial(a.cli.Context, a.timeout)
	}
	if a.checkSocket {
		if err := checkDefaultAdminSocket(a.socket); err != nil {
			return nil, err
		}
	}
	return dialAdmin(a.socket, a.timeout)
}

// checkDefaultAdminSocket reports an error unless path, the admin socket
// under the working directory that the user did not name, is one that
// only this user or root can have made: in a shared directory such as
// /tmp another local user could otherwise serve it, and receive the
// commands (and answer them with a bundle or backup of their own).
func checkDefaultAdminSocket(path string) error {
	err := unixsock.CheckDial(path)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fs.ErrNotExist):
		// As a dial would say, without the checked directories.
		return fmt.Errorf("cannot connect to the admin socket %s: %w", path, syscall.ENOENT)
	}
	return fmt.Errorf("refusing the default admin socket %s, which another user may have made: %w; if it is your server's, name it with --%s or $%s, or its data directory with $%s", path, err, flagAdminSocket, adminSocketEnv, dataDirEnv)
}

// callAdmin dials the admin socket and makes one call, bounded by the
// command's --timeout; a failure comes back as the user should see it.
func callAdmin[T any](ctx context.Context, a *adminCmd, call func(context.Context, *adminClient) (T, error)) (T, error) {
	var zero T
	client, err := a.dial()
	if err != nil {
		return zero, err
	}
	defer client.Close()
	ctx, cancel := client.callContext(ctx)
	defer cancel()
	resp, err := call(ctx, client)
	if err != nil {
		return zero, client.callError(err)
	}
	return resp, nil
}

// adminClient is a connection to the server's admin API.
type adminClient struct {
	socket string
	// remote describes the remote admin API the client talks to; nil
	// for the admin socket.
	remote  *remoteConn
	timeout time.Duration
	conn    *grpc.ClientConn

	entries adminv1.EntryServiceClient
	agents  adminv1.AgentServiceClient
	tokens  adminv1.JoinTokenServiceClient
	bundles adminv1.BundleServiceClient
	servers adminv1.ServerServiceClient
	ca      adminv1.CAServiceClient

	federations adminv1.FederationServiceClient
	oauth       adminv1.OAuthServiceClient

	mu sync.Mutex // guards dialErr
	// dialErr is the last error connecting to the socket, reported in
	// place of gRPC's Unavailable message.
	dialErr error
}

// dialAdmin returns a client of the admin API on the Unix socket at path.
// Each call is limited to timeout.
//
// The socket is dialled directly rather than through a "unix:" target so
// that any path works, including ones with '%', '?', '#' or spaces, which
// the target's URL syntax would mangle. The :authority is "localhost", as
// with gRPC's unix resolver.
func dialAdmin(path string, timeout time.Duration) (*adminClient, error) {
	c := &adminClient{socket: path, timeout: timeout}
	dialer := func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", path)
		if err != nil {
			c.mu.Lock()
			c.dialErr = err
			c.mu.Unlock()
		}
		return conn, err
	}
	conn, err := grpc.NewClient("passthrough:///localhost",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dialer),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(maxAdminMessageSize),
			grpc.MaxCallSendMsgSize(maxAdminMessageSize),
		),
	)
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	c.setConn(conn)
	return c, nil
}

// setConn makes c a client of conn.
func (c *adminClient) setConn(conn *grpc.ClientConn) {
	c.conn = conn
	c.entries = adminv1.NewEntryServiceClient(conn)
	c.agents = adminv1.NewAgentServiceClient(conn)
	c.tokens = adminv1.NewJoinTokenServiceClient(conn)
	c.bundles = adminv1.NewBundleServiceClient(conn)
	c.servers = adminv1.NewServerServiceClient(conn)
	c.ca = adminv1.NewCAServiceClient(conn)
	c.federations = adminv1.NewFederationServiceClient(conn)
	c.oauth = adminv1.NewOAuthServiceClient(conn)
}

// Close closes the connection.
func (c *adminClient) Close() error { return c.conn.Close() }

// callContext returns the context of one call: ctx limited to the timeout.
func (c *adminClient) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.timeout)
}

// serverError is an error returned by a call, reduced to what the user
// needs: the server's message, or why the socket could not be reached.
type serverError struct {
	code codes.Code
	msg  string
}

func (e *serverError) Error() string { return e.msg }

// callError converts an error returned by a call into a serverError.
func (c *adminClient) callError(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	if c.remote != nil {
		return c.remote.callError(st, c.timeout)
	}
	if st.Code() == codes.Unavailable {
		c.mu.Lock()
		dialErr := c.dialErr
		c.mu.Unlock()
		if dialErr != nil {
			// Drop net.OpError's "dial unix PATH: ", said already.
			if oe, ok := errors.AsType[*net.OpError](dialErr); ok && oe.Err != nil {
				dialErr = oe.Err
			}
			return &serverError{code: st.Code(), msg: fmt.Sprintf("cannot connect to the admin socket %s: %v", c.socket, dialErr)}
		}
	}
	if st.Code() == codes.DeadlineExceeded {
		return &serverError{code: st.Code(), msg: fmt.Sprintf("no answer from the server within %s: %s", c.timeout, st.Message())}
	}
	return &serverError{code: st.Code(), msg: st.Message()}
}
