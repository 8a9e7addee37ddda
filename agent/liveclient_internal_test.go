package agent

import (
	"errors"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/agent/nodeclient"
)

// borrow answers at once when connected or disconnected; while the agent
// reconnects, it waits for the next session's client, or for the news
// that there will be none.
func TestLiveClientBorrow(t *testing.T) {
	newClient := func() *nodeclient.Client {
		c, err := nodeclient.New(nodeclient.Config{Address: "127.0.0.1:1", TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), InsecureBootstrap: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	borrow := func(l *liveClient) <-chan error {
		done := make(chan error, 1)
		go func() {
			c, err := l.borrow(t.Context())
			if err == nil && c == nil {
				err = errors.New("no client and no error")
			}
			done <- err
		}()
		return done
	}
	wait := func(what string, done <-chan error) error {
		t.Helper()
		select {
		case err := <-done:
			return err
		case <-time.After(reconnectWait + 10*time.Second):
			t.Fatalf("%s: borrow did not return", what)
			return nil
		}
	}

	var l liveClient
	if _, err := l.borrow(t.Context()); !errors.Is(err, nodeclient.ErrUnavailable) {
		t.Fatalf("never connected: %v", err)
	}
	c1 := newClient()
	l.set(c1)
	if c, err := l.borrow(t.Context()); c != c1 || err != nil {
		t.Fatalf("connected: %v, %v", c, err)
	}

	// The session ends to reconnect: borrow waits for the next one.
	l.end(c1, true)
	done := borrow(&l)
	c2 := newClient()
	l.set(c2)
	if err := wait("reconnected", done); err != nil {
		t.Fatalf("reconnected: %v", err)
	}
	if c, _ := l.borrow(t.Context()); c != c2 {
		t.Fatal("not the new session's client")
	}

	// The next session fails before it syncs: the wait ends.
	l.end(c2, true)
	done = borrow(&l)
	l.end(newClient(), false)
	if err := wait("reconnection failed", done); !errors.Is(err, nodeclient.ErrUnavailable) {
		t.Fatalf("reconnection failed: %v", err)
	}
	// A stale end (of a session that no longer holds l) does not
	// disconnect the current one.
	c3 := newClient()
	l.set(c3)
	l.end(c2, false)
	if c, _ := l.borrow(t.Context()); c != c3 {
		t.Fatal("an old session's end dropped the current client")
	}
}
