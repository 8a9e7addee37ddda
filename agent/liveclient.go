package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"writ.dev/writ/agent/nodeclient"
)

// reconnectWait bounds how long a workload's call (a JWT-SVID, a
// downstream call) waits for the next session when the agent is
// reconnecting to present a renewed agent SVID: the agent reconnects at
// once, and the call goes through the new connection instead of failing.
// A latency, not a timer: the monotonic clock, not the Clock.
const reconnectWait = 2 * time.Second

// errNotConnected: no session holds a server connection.
var errNotConnected = fmt.Errorf("%w: %w", nodeclient.ErrUnavailable, status.Error(codes.Unavailable, "agent is not connected to the server"))

// liveClient is the node client of the connected session, which the
// calls workloads make through the agent borrow. A session closes its
// client only after taking it out of here, but a call may have borrowed
// it just before: such a call fails with nodeclient.ErrClosed, and is
// made again with the next session's client (see borrow).
type liveClient struct {
	mu sync.Mutex // guards c, reconnecting and changed
	// c is the connected session's client; nil between sessions.
	c *nodeclient.Client
	// reconnecting: the last session ended to reconnect with a renewed
	// agent SVID, and the next one has not ended or synced yet.
	reconnecting bool
	// changed is closed and replaced whenever c or reconnecting changes.
	changed chan struct{}
}

// load returns the connected session's client, or nil.
func (l *liveClient) load() *nodeclient.Client {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.c
}

// set makes c, whose session has synced, the connected one.
func (l *liveClient) set(c *nodeclient.Client) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.c, l.reconnecting = c, false
	l.notifyLocked()
}

// end records that the session of c (which may never have been set)
// ended, before it closes c; reconnect: the agent opens the next one at
// once, and borrowers wait for it.
func (l *liveClient) end(c *nodeclient.Client, reconnect bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c != nil && l.c == c {
		l.c = nil
	}
	l.reconnecting = reconnect && l.c == nil
	l.notifyLocked()
}

func (l *liveClient) notifyLocked() {
	if l.changed != nil {
		close(l.changed)
		l.changed = nil
	}
}

// borrow returns the connected session's client. While the agent
// reconnects with a renewed SVID, it waits for the next session, up to
// reconnectWait. It fails with an error wrapping
// nodeclient.ErrUnavailable when there is none.
func (l *liveClient) borrow(ctx context.Context) (*nodeclient.Client, error) {
	c, changed := l.current()
	switch {
	case c != nil:
		return c, nil
	case changed == nil:
		return nil, errNotConnected
	}
	t := time.NewTimer(reconnectWait)
	defer t.Stop()
	for {
		select {
		case <-changed:
		case <-t.C:
			return nil, fmt.Errorf("%w: still reconnecting after %s", errNotConnected, reconnectWait)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		switch c, changed = l.current(); {
		case c != nil:
			return c, nil
		case changed == nil:
			return nil, errNotConnected
		}
	}
}

// current returns the connected session's client; else, while the agent
// reconnects, a channel closed at the next change; else neither.
func (l *liveClient) current() (*nodeclient.Client, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.c != nil || !l.reconnecting {
		return l.c, nil
	}
	if l.changed == nil {
		l.changed = make(chan struct{})
	}
	return nil, l.changed
}

// retryClosed reports whether a call that failed with err should be made
// again with the next session's client: its client was closed under it
// (the session ended), and its caller still waits.
func retryClosed(ctx context.Context, err error) bool {
	return errors.Is(err, nodeclient.ErrClosed) && ctx.Err() == nil
}
