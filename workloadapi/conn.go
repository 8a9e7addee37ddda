package workloadapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/internal/peercred"
	"writ.dev/writ/internal/unixsock"
	"writ.dev/writ/workloadapi/unixattest"

	"writ.dev/writ/internal/logkey"
)

// limitListener accepts at most max connections at once, and at most
// perUID from any one uid (by the peer credentials the kernel recorded at
// connect), so that no local user can take every slot; it closes the
// ones beyond that as soon as they are accepted, so that they fail fast
// instead of waiting in the kernel's backlog.
type limitListener struct {
	*unixsock.Listener
	max, perUID int
	clk         clock.Clock
	log         *slog.Logger

	mu     sync.Mutex // guards active, byUID, full, fullUID
	active int
	byUID  map[uint32]int
	// full and fullUID are set while connections are being refused, so
	// that the warning is logged once per episode.
	full    bool
	fullUID map[uint32]bool
}

func newLimitListener(l *unixsock.Listener, max, perUID int, clk clock.Clock, log *slog.Logger) *limitListener {
	return &limitListener{
		Listener: l, max: max, perUID: perUID, clk: clk, log: log,
		byUID: make(map[uint32]int), fullUID: make(map[uint32]bool),
	}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return nil, err
		}
		cred, err := peercred.FromConn(c)
		if err != nil {
			// Without credentials no call could be answered.
			l.log.Debug("Workload API connection without peer credentials; closing it", logkey.Error, err)
			c.Close()
			continue
		}
		if !l.admit(cred.UID) {
			c.Close()
			continue
		}
		return &serverConn{UnixConn: c, l: l, uid: cred.UID, done: make(chan struct{})}, nil
	}
}

// admit takes a slot for a connection of uid, or reports false if uid
// holds its share already or every slot is taken.
func (l *limitListener) admit(uid uint32) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.byUID[uid] >= l.perUID {
		if !l.fullUID[uid] {
			l.fullUID[uid] = true
			l.log.Warn("Workload API per-uid connection limit reached; refusing this uid's new connections", logkey.UID, uid, "max_connections_per_uid", l.perUID)
		}
		return false
	}
	if l.active >= l.max {
		if !l.full {
			l.full = true
			l.log.Warn("Workload API connection limit reached; refusing new connections", "max_connections", l.max)
		}
		return false
	}
	delete(l.fullUID, uid)
	l.full = false
	l.active++
	l.byUID[uid]++
	return true
}

func (l *limitListener) release(uid uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.active--
	if l.byUID[uid]--; l.byUID[uid] <= 0 {
		delete(l.byUID, uid)
	}
}

// serverConn is an accepted connection. Closing it releases its slot and
// the pinned process.
//
// A connection that has not been served (no call on it got an identity's
// SVIDs, bundles or validation, or the latest call was refused with "no
// identity issued") is closed once it has had no call in progress for a
// while: firstCallTimeout after connecting, refusedLinger after its last
// call. Its client reconnects on its next call; a caller without identity
// cannot sit on a slot.
type serverConn struct {
	*net.UnixConn
	l    *limitListener
	uid  uint32
	done chan struct{} // closed by Close

	mu     sync.Mutex // guards closed, state, calls, served, deadline, timer
	closed bool
	state  *connState
	// calls is the number of calls in progress.
	calls int
	// served: the latest call that ended was answered with an
	// identity's data.
	served bool
	// deadline is when the connection is closed if still idle and not
	// served; zero while no close is pending.
	deadline time.Time
	timer    clock.Timer
}

func (c *serverConn) Close() error {
	err := c.UnixConn.Close()
	c.mu.Lock()
	closed, st := c.closed, c.state
	c.closed = true
	c.mu.Unlock()
	if !closed {
		close(c.done)
		c.l.release(c.uid)
		if st != nil && st.proc != nil {
			st.proc.Close()
		}
	}
	return err
}

// setState records the connection's attestation state and starts the
// close of an idle connection that is never served; it reports false if
// the connection is already closed.
func (c *serverConn) setState(st *connState) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.state = st
	st.conn = c
	clk := c.l.clk
	c.deadline = clk.Now().Add(firstCallTimeout)
	c.timer = clk.NewTimer(firstCallTimeout)
	go c.closeWhenIdle(c.timer)
	return true
}

// closeWhenIdle closes the connection when its deadline passes while it
// is idle and not served; it returns once the connection is closed.
func (c *serverConn) closeWhenIdle(t clock.Timer) {
	for {
		select {
		case <-c.done:
			t.Stop()
			return
		case <-t.C():
		}
		c.mu.Lock()
		due := !c.deadline.IsZero() && c.calls == 0 && !c.served && !c.l.clk.Now().Before(c.deadline)
		c.mu.Unlock()
		if due {
			c.l.log.Debug("closing an idle Workload API connection that was not served", logkey.UID, c.uid)
			c.Close()
			<-c.done
			return
		}
	}
}

// callStarted notes a call in progress: the connection stays open.
func (c *serverConn) callStarted() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if !c.deadline.IsZero() {
		c.deadline = time.Time{}
		c.timer.Stop()
	}
}

// callEnded notes the end of a call, whether it was served (true),
// refused for want of identity (false), or neither (nil: an invalid
// request, a cancelled wait), and arms the close of an idle connection
// that is not served.
func (c *serverConn) callEnded(served *bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls--
	if served != nil {
		c.served = *served
	}
	if c.calls > 0 || c.served || c.closed {
		return
	}
	c.deadline = c.l.clk.Now().Add(refusedLinger)
	c.timer.Reset(refusedLinger)
}

// markServed notes that a call in progress has sent an identity's data.
func (c *serverConn) markServed() {
	c.mu.Lock()
	c.served = true
	c.mu.Unlock()
}

// connState is what is known of the process at the other end of a
// connection.
type connState struct {
	// proc is the process pinned at connect, nil if pinning failed.
	proc *unixattest.Process
	// pinErr is why pinning failed; every call is refused with it.
	pinErr error
	// conn is the connection; set once, by setState.
	conn *serverConn
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
		s.log.Error("Workload API call without attestation state", logkey.Error, errNoConnState)
		return nil, nil, errNoIdentity
	}
	if st.pinErr != nil {
		s.log.Debug("caller not attested: pinning its process failed", logkey.Error, st.pinErr)
		return nil, nil, errNoIdentity
	}
	if sel := st.sel.Load(); sel != nil {
		if err := st.proc.Check(); err != nil {
			s.logRefused(st, "caller changed since it connected", err)
			return nil, nil, errNoIdentity
		}
		return st, *sel, nil
	}
	began := s.clk.Now()
	sel, err := st.proc.Selectors(ctx)
	s.metrics.Attested(s.clk.Now().Sub(began))
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

// unentitled is the answer to a caller that matches no entry:
// PermissionDenied once the agent has its entries, Unavailable before.
func (s *Server) unentitled() error {
	if s.synced != nil {
		select {
		case <-s.synced:
		default:
			return errNotSynced
		}
	}
	return errNoIdentity
}

func (s *Server) logRefused(st *connState, msg string, err error) {
	if !s.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	cred := st.proc.Cred()
	if err == nil {
		s.log.Debug(msg, logkey.PID, cred.PID, logkey.UID, cred.UID)
		return
	}
	s.log.Debug(msg, logkey.PID, cred.PID, logkey.UID, cred.UID, logkey.Error, err)
}
