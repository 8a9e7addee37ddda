package agent_test

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"writ.dev/writ/agent"
	"writ.dev/writ/agent/internal/fakenode"
)

// firstSyncTimeout is agent.firstSyncTimeout.
const firstSyncTimeout = 30 * time.Second

// TestNoFirstSyncMessage: a server that takes the Sync call but sends no
// first message is given up on after firstSyncTimeout on the agent's
// clock, not the system's, and the agent connects again.
func TestNoFirstSyncMessage(t *testing.T) {
	e := newEnv(t, fakenode.Options{})
	r := e.start(e.attestConfig())
	e.ready(r)
	e.srv.HoldSync(true)
	e.srv.Stop()
	eventually(t, "the agent to notice the outage", func() bool { return e.logs.has(slog.LevelWarn, "connection to the server lost") })
	syncs := e.srv.Stats().Syncs
	e.srv.Restart()
	e.advanceUntil("a Sync call", agent.ReconnectSpread, func() bool { return e.srv.Stats().Syncs > syncs })

	// The agent now waits for the first message, on its clock.
	e.waitTimerWithin(firstSyncTimeout)
	timedOut := func() bool { return strings.Contains(e.logs.text(), "no first Sync message from the server in time") }
	e.clk.Advance(firstSyncTimeout - time.Second)
	e.waitTimerWithin(time.Second)
	if timedOut() {
		t.Fatal("gave up on the first Sync message before its time")
	}
	e.clk.Advance(time.Second)
	eventually(t, "the agent to give up on the first Sync message", timedOut)
	e.srv.HoldSync(false)
	conns := e.srv.Stats().Conns
	e.advanceUntil("a new connection", agent.ReconnectBackoff.Max, func() bool { return e.srv.Stats().Conns > conns })
	eventually(t, "the agent healthy again", r.a.Healthy)
}
