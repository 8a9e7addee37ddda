package agent_test

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"writ.dev/writ/agent"
	"writ.dev/writ/agent/internal/fakenode"
	"writ.dev/writ/agent/svidcache"
	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/entry"
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

// jumpEnv is an agent with one workload entry whose X.509-SVIDs live an
// hour, and an agent SVID that lives five days (the fake CA seven).
func jumpEnv(t *testing.T) (*env, *running, *nodev1.Entry, []entry.Selector) {
	e := newEnv(t, fakenode.Options{AgentTTL: 5 * 24 * time.Hour, X509TTL: time.Hour})
	w := e.srv.Entry("/web", "unix:uid:1")
	e.srv.SetEntries(w)
	r := e.start(e.attestConfig())
	e.ready(r)
	return e, r, w, mustSels(t, "unix:uid:1")
}

// passMinutes lets time pass, half a minute at a time, each time the
// agent waits on a timer due within a minute (its loops check the clock
// at least once a minute).
func (e *env) passMinutes(n int) {
	e.t.Helper()
	for range 2 * n {
		e.waitTimerWithin(time.Minute)
		e.clk.Advance(30 * time.Second)
	}
}

// validAt reports whether s is valid at now.
func validAt(s *svidcache.X509SVID, now time.Time) bool {
	return s != nil && !now.Before(s.NotBefore) && now.Before(s.NotAfter)
}

// TestClockJumpForward: when the wall clock steps a day forward, past
// the workload SVIDs' expiry, nothing expired is served, and SVIDs valid
// at the new time are served within two minutes of time passing, whether
// a workload asks at once or not at all: the agent does not sleep out
// waits computed before the step. The agent SVID, valid for days yet, is
// kept.
func TestClockJumpForward(t *testing.T) {
	for _, readAtOnce := range []bool{true, false} {
		t.Run(fmt.Sprintf("read at once %v", readAtOnce), func(t *testing.T) {
			e, r, w, sel := jumpEnv(t)
			c := r.a.Cache()
			e.waitTimers(3)
			e.clk.Jump(24 * time.Hour)
			if readAtOnce {
				if got := c.X509SVIDs(sel); len(got) != 0 {
					t.Fatalf("served an SVID that expired at %v, now %v", got[0].NotAfter, e.clk.Now())
				}
			}
			e.passMinutes(2)
			eventually(t, "an SVID valid at the new time", func() bool { return validAt(svidFor(c, w.Id, sel), e.clk.Now()) })
			if n := e.srv.Signed(w.Id); n != 2 {
				t.Errorf("%d signings of the entry, want 2", n)
			}
			if st := e.srv.Stats(); st.Renewals != 0 || st.Attests != 1 || !r.a.Healthy() {
				t.Errorf("the agent SVID, valid for days yet, was renewed (%d) or attested again (%d), or the agent is unhealthy", st.Renewals, st.Attests-1)
			}
		})
	}
}

// TestClockJumpBackward: when the wall clock steps a day back, before the
// workload SVID was received, the SVID is not dropped as not yet valid:
// it is served until a new one, valid at the new time, replaces it within
// two minutes of time passing, instead of a day and a half later when the
// wall clock would reach its rotation time again. The agent SVID,
// received before the new time, is kept.
func TestClockJumpBackward(t *testing.T) {
	e, r, w, sel := jumpEnv(t)
	c := r.a.Cache()
	// Two days pass: the workload SVID is renewed, the agent SVID (half
	// life two and a half days) is not.
	e.waitTimers(3)
	e.clk.Advance(48 * time.Hour)
	eventually(t, "an SVID valid two days later", func() bool { return validAt(svidFor(c, w.Id, sel), e.clk.Now()) })
	signed := e.srv.Signed(w.Id)
	cur := svidFor(c, w.Id, sel)

	e.waitTimers(3)
	e.clk.Jump(-24 * time.Hour)
	if got := svidFor(c, w.Id, sel); got != cur {
		t.Fatal("the SVID was dropped when the clock stepped back")
	}
	e.passMinutes(2)
	eventually(t, "an SVID valid at the new time", func() bool { return validAt(svidFor(c, w.Id, sel), e.clk.Now()) })
	if n := e.srv.Signed(w.Id); n != signed+1 {
		t.Errorf("%d signings of the entry after the step, want 1", n-signed)
	}
	if st := e.srv.Stats(); st.Renewals != 0 || st.Attests != 1 || !r.a.Healthy() {
		t.Errorf("the agent SVID, valid at the new time, was renewed (%d) or attested again (%d), or the agent is unhealthy", st.Renewals, st.Attests-1)
	}
}

// TestAgentClockBehindServer: when the agent's wall clock steps an hour
// back and stays there while the server's does not, the agent renews its
// SVID early once (and must refuse the new one, not yet valid by its
// clock), then keeps the one it has and syncs, instead of renewing again
// on every connection and never syncing. The server's CA and TLS
// certificate date from before the agent's new time, as a server running
// for a while has them.
func TestAgentClockBehindServer(t *testing.T) {
	start := time.Now().Truncate(time.Second)
	srvClk := fakeclock.New(start.Add(-2 * time.Hour)) // the CA is made now
	e := newEnv(t, fakenode.Options{Clock: srvClk, ServerCertAge: 2 * time.Hour, AgentTTL: 5 * 24 * time.Hour, X509TTL: time.Hour})
	w := e.srv.Entry("/web", "unix:uid:1")
	e.srv.SetEntries(w)
	r := e.start(e.attestConfig())
	e.ready(r)
	srvClk.Advance(e.clk.Now().Sub(srvClk.Now())) // the clocks agree
	e.waitTimers(3)
	e.clk.Jump(-time.Hour)
	e.passMinutes(2)
	eventually(t, "the early renewal", func() bool { return e.srv.Stats().Renewals == 1 })
	synced := func() int { return strings.Count(e.logs.text(), "entries synced") }
	before := synced()
	// Steps of a second: the reconnection's backoff passes, the wait for
	// the first Sync message (30 s) does not.
	e.advanceUntil("a new session synced", time.Second, func() bool { return synced() > before })
	e.passMinutes(5)
	if st := e.srv.Stats(); st.Renewals != 1 || st.Attests != 1 {
		t.Errorf("%d renewals, %d attestations; want 1 and 1", st.Renewals, st.Attests)
	}
}

// TestClockCorrectedBackRenewalRetried: an agent clock two hours ahead
// of the server's is corrected back while the server is down; the early
// renewal that the step calls for fails then, and is made once the
// server is back (a failure to reach the server does not use it up).
func TestClockCorrectedBackRenewalRetried(t *testing.T) {
	start := time.Now().Truncate(time.Second)
	srvClk := fakeclock.New(start.Add(-2 * time.Hour))
	e := newEnv(t, fakenode.Options{Clock: srvClk, AgentTTL: 5 * 24 * time.Hour, X509TTL: 4 * time.Hour})
	r := e.start(e.attestConfig())
	e.ready(r)
	e.waitTimers(3)
	e.srv.Stop()
	eventually(t, "the agent to notice the outage", func() bool { return e.logs.has(slog.LevelWarn, "connection to the server lost") })
	e.clk.Jump(srvClk.Now().Sub(e.clk.Now())) // the clocks agree
	e.advanceUntil("a failed renewal", time.Second, func() bool { return strings.Contains(e.logs.text(), "renew agent SVID") })
	if n := e.srv.Stats().Renewals; n != 0 {
		t.Fatalf("%d renewals while the server was down", n)
	}
	e.srv.Restart()
	e.advanceUntil("the renewal", agent.ReconnectBackoff.Max, func() bool { return e.srv.Stats().Renewals == 1 })
	eventually(t, "the renewed agent SVID", func() bool { return r.a.Healthy() && e.srv.Stats().Attests == 1 })
}

// TestClockJumpForwardAgentSVID: when the wall clock steps past the agent
// SVID's rotation time (but not its expiry), it is renewed within two
// minutes of time passing, and the agent reconnects with it.
func TestClockJumpForwardAgentSVID(t *testing.T) {
	e, r, _, _ := jumpEnv(t)
	old := readAgentCert(t, e.dir)
	e.waitTimers(3)
	e.clk.Jump(3 * 24 * time.Hour) // half life is two and a half days
	if !e.clk.Now().Before(old.NotAfter) {
		t.Fatal("the step passes the agent SVID's expiry")
	}
	e.passMinutes(2)
	eventually(t, "the agent SVID renewed", func() bool { return e.srv.Stats().Renewals == 1 })
	eventually(t, "the renewed agent SVID saved", func() bool { return readAgentCert(t, e.dir).NotAfter.After(old.NotAfter) })
	if st := e.srv.Stats(); st.Attests != 1 || !r.a.Healthy() {
		t.Errorf("attested again (%d) or unhealthy", st.Attests-1)
	}
}
