package workloadapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"writ.dev/writ/ca/entry"
	"writ.dev/writ/workloadapi/unixattest"
)

// limitListener accepts at most max connections at once; it closes the
// ones beyond that as soon as they are accepted, so that they fail fast
// instead of waiting in the kernel's backlog.
type limitListener struct {
	*net.UnixListener
	max    int64
	active atomic.Int64
	log    *slog.Logger
	// full is set while connections are being refused, so that the
	// warning is logged once per episode.
	full atomic.Bool
}

func newLimitListener(l *net.UnixListener, max int, log *slog.Logger) *limitListener {
	return &limitListener{UnixListener: l, max: int64(max), log: log}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return nil, err
		}
		if l.active.Add(1) > l.max {
			l.active.Add(-1)
			c.Close()
			if l.full.CompareAndSwap(false, true) {
				l.log.Warn("Workload API connection limit reached; refusing new connections", "max_connections", l.max)
			}
			continue
		}
		l.full.Store(false)
		return &serverConn{UnixConn: c, l: l}, nil
	}
}

// serverConn is an accepted connection. Closing it releases its slot and
// the pinned process.
type serverConn struct {
	*net.UnixConn
	l *limitListener

	mu     sync.Mutex // guards closed, state
	closed bool
	state  *connState
}

func (c *serverConn) Close() error {
	err := c.UnixConn.Close()
	c.mu.Lock()
	closed, st := c.closed, c.state
	c.closed = true
	c.mu.Unlock()
	if !closed {
		c.l.active.Add(-1)
		if st != nil && st.proc != nil {
			st.proc.Close()
		}
	}
	return err
}

// setState records the connection's attestation state; it reports false
// if the connection is already closed.
func (c *serverConn) setState(st *connState) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.state = st
	return true
}

// connState is what is known of the process at the other end of a
// connection.
type connState struct {
	// proc is the process pinned at connect, nil if pinning failed.
	proc *unixattest.Process
	// pinErr is why pinning failed; every call is refused with it.
	pinErr error
	// sel are the process's selectors, once computed.
	sel atomic.Pointer[[]entry.Selector]
}

// authInfo carries a connection's state to its calls.
type authInfo struct {
	credentials.CommonAuthInfo
	conn *connState
}

func (authInfo) AuthType() string { return authType }

const authType = "writ-workload-peercred"

// transportCreds pin the peer's process once per connection, in the
// handshake, which reads and writes nothing.
type transportCreds struct{ s *Server }

var errClientSide = errors.New("workloadapi: transport credentials are for the server side only")

func (t transportCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c, ok := raw.(*serverConn)
	if !ok {
		return nil, nil, fmt.Errorf("workloadapi: connection is a %T, not one of the Workload API listener's", raw)
	}
	st := &connState{}
	if p, err := t.s.attestor.PinConn(c.UnixConn); err != nil {
		// The connection is kept: every call on it is refused with
		// PermissionDenied, which clients understand, rather than a
		// transport error, which they retry.
		st.pinErr = err
	} else {
		st.proc = p
	}
	if !c.setState(st) {
		if st.proc != nil {
			st.proc.Close()
		}
		return nil, nil, net.ErrClosed
	}
	return c, authInfo{
		// The kernel carries the bytes; no one else on the host can read
		// or change them.
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		conn:           st,
	}, nil
}

func (transportCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errClientSide
}

func (transportCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: authType}
}

func (t transportCreds) Clone() credentials.TransportCredentials { return t }

// OverrideServerName is unused by gRPC and has nothing to override.
func (transportCreds) OverrideServerName(string) error { return nil }

// errNoConnState means a call arrived without the connection state the
// transport credentials attach; it cannot happen with Run's server.
var errNoConnState = errors.New("workloadapi: call without connection attestation state")

// attest identifies the caller of the call whose context is ctx: it
// confirms that the process pinned at connect is unchanged (Check) and
// returns its selectors, computed on the connection's first call. Any
// failure means "no identity"; the detail is logged at debug level.
func (s *Server) attest(ctx context.Context) (*connState, []entry.Selector, error) {
	st := connStateFrom(ctx)
	if st == nil {
		s.log.Error("Workload API call without attestation state", "err", errNoConnState)
		return nil, nil, errNoIdentity
	}
	if st.pinErr != nil {
		s.log.Debug("caller not attested: pinning its process failed", "err", st.pinErr)
		return nil, nil, errNoIdentity
	}
	if sel := st.sel.Load(); sel != nil {
		if err := st.proc.Check(); err != nil {
			s.logRefused(st, "caller changed since it connected", err)
			return nil, nil, errNoIdentity
		}
		return st, *sel, nil
	}
	sel, err := st.proc.Selectors(ctx)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, nil, contextStatus(ctxErr)
		}
		s.logRefused(st, "caller attestation failed", err)
		return nil, nil, errNoIdentity
	}
	st.sel.Store(&sel)
	return st, sel, nil
}

func connStateFrom(ctx context.Context) *connState {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := p.AuthInfo.(authInfo)
	if !ok {
		return nil
	}
	return info.conn
}

// check confirms, before a stream sends, that the caller is unchanged.
func (s *Server) check(st *connState) error {
	if err := st.proc.Check(); err != nil {
		s.logRefused(st, "caller changed since it connected", err)
		return errNoIdentity
	}
	return nil
}

func (s *Server) logRefused(st *connState, msg string, err error) {
	if !s.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	cred := st.proc.Cred()
	if err == nil {
		s.log.Debug(msg, keyPID, cred.PID, keyUID, cred.UID)
		return
	}
	s.log.Debug(msg, keyPID, cred.PID, keyUID, cred.UID, "err", err)
}

// Log attribute keys.
const (
	keyPID      = "pid"
	keyUID      = "uid"
	keySPIFFEID = "spiffe_id"
	keyEntryID  = "entry_id"
)
