package agent_test

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"writ.dev/writ/agent"
	"writ.dev/writ/agent/internal/fakenode"
)

// TestFailoverToAnotherServer runs an agent against two servers sharing
// a CA and agent list: when the server it is connected to goes away, it
// connects to the other without attesting again, the cache keeps serving
// the SVIDs it holds throughout, and signing goes to the new server.
func TestFailoverToAnotherServer(t *testing.T) {
	e := newEnv(t, fakenode.Options{})
	peer := fakenode.StartPeer(t, e.srv)
	w := e.srv.Entry("/web", "unix:uid:1000")
	e.srv.SetEntries(w)
	peer.SetEntries(w)
	cfg := e.attestConfig()
	peer.AllowJoinToken(cfg.JoinToken)
	cfg.ServerAddress = ""
	cfg.ServerAddresses = []string{e.srv.Address(), peer.Address()}
	r := e.start(cfg)
	e.ready(r)
	sel := mustSels(t, "unix:uid:1000")

	// streaming returns the server the agent holds its Sync stream on.
	streaming := func() (*fakenode.Server, *fakenode.Server) {
		switch a, b := e.srv.Stats().Streams, peer.Stats().Streams; {
		case a == 1 && b == 0:
			return e.srv, peer
		case a == 0 && b == 1:
			return peer, e.srv
		}
		return nil, nil
	}
	var connected, other *fakenode.Server
	eventually(t, "one Sync stream", func() bool { connected, other = streaming(); return connected != nil })
	attests := func() int { return e.srv.Stats().Attests + peer.Stats().Attests }
	if n := attests(); n != 1 {
		t.Fatalf("%d attestations, want 1", n)
	}
	agentID := r.a.ID()
	svid := svidFor(r.a.Cache(), w.Id, sel)
	if svid == nil {
		t.Fatal("no SVID")
	}

	for i, round := range []string{"first failover", "failover back"} {
		t.Logf("%s: stopping the server at %s", round, connected.Address())
		lost := e.logs.count(slog.LevelWarn, "connection to the server lost")
		connected.Stop()
		eventually(t, "the agent to notice", func() bool {
			return e.logs.count(slog.LevelWarn, "connection to the server lost") > lost
		})
		// No server: the cached SVID is still served.
		if got := svidFor(r.a.Cache(), w.Id, sel); got == nil || !got.NotAfter.Equal(svid.NotAfter) {
			t.Fatalf("%s: SVID not served while reconnecting", round)
		}
		syncs := other.Stats().Syncs
		eventually(t, "a Sync stream on the other server", func() bool {
			e.clk.Advance(agent.ReconnectSpread)
			time.Sleep(5 * time.Millisecond)
			return other.Stats().Syncs > syncs && other.Stats().Streams == 1
		})
		if n := attests(); n != 1 {
			t.Fatalf("%s: %d attestations, want 1 (no re-attestation)", round, n)
		}
		if r.a.ID() != agentID || !r.a.Healthy() {
			t.Fatalf("%s: agent %s, healthy %v; want %s, healthy", round, r.a.ID(), r.a.Healthy(), agentID)
		}
		// The same SVID, never dropped, not signed again.
		if got := svidFor(r.a.Cache(), w.Id, sel); got == nil || got.NotAfter.After(svid.NotAfter) {
			t.Fatalf("%s: SVID after failover: %v", round, got)
		}

		// Signing goes to the connected server.
		added := other.Entry(fmt.Sprintf("/added/%d", i), "unix:uid:1000")
		other.SetEntries(w, added)
		eventually(t, "the new entry's SVID", func() bool { return svidFor(r.a.Cache(), added.Id, sel) != nil })
		if n := other.Signed(added.Id); n != 1 {
			t.Errorf("%s: the connected server signed %d SVIDs for the new entry, want 1", round, n)
		}
		jwts := other.Stats().JWTCalls
		if _, err := r.a.Cache().FetchJWTSVID(t.Context(), w.Id, []string{"aud-" + round}); err != nil {
			t.Fatalf("%s: JWT-SVID: %v", round, err)
		}
		if n := other.Stats().JWTCalls; n != jwts+1 {
			t.Errorf("%s: the connected server got %d JWT-SVID calls, want %d", round, n, jwts+1)
		}
		other.SetEntries(w)
		eventually(t, "the added entry's removal", func() bool { return svidFor(r.a.Cache(), added.Id, sel) == nil })

		// Bring the stopped server back, for the next round.
		connected.Restart()
		connected, other = other, connected
	}
	if !e.logs.has(slog.LevelInfo, "connected to the server") {
		t.Error("no log of which server the agent connected to")
	}
}

// TestAttestFailsOverWhileUnreachable starts a new agent whose first
// server is down: it attests with the second.
func TestAttestFailsOverWhileUnreachable(t *testing.T) {
	e := newEnv(t, fakenode.Options{})
	peer := fakenode.StartPeer(t, e.srv)
	w := e.srv.Entry("/web", "unix:uid:1000")
	peer.SetEntries(w)
	cfg := e.attestConfig()
	peer.AllowJoinToken(cfg.JoinToken)
	down := e.srv.Address()
	e.srv.Stop()
	cfg.ServerAddress = ""
	cfg.ServerAddresses = []string{down, peer.Address()}
	r := e.start(cfg)
	eventually(t, "attestation with the second server", func() bool {
		select {
		case <-r.a.Ready():
			return true
		case <-r.done:
			t.Fatalf("agent stopped: %v", r.err)
		default:
		}
		e.clk.Advance(agent.ReconnectBackoff.Base)
		time.Sleep(5 * time.Millisecond)
		return false
	})
	if n := peer.Stats().Attests; n != 1 {
		t.Fatalf("second server got %d attestations, want 1", n)
	}
	if svidFor(r.a.Cache(), w.Id, mustSels(t, "unix:uid:1000")) == nil {
		t.Fatal("no SVID")
	}
}

// count returns how many records at level have a message containing sub.
func (l *logs) count(level slog.Level, sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.recs {
		if r.Level == level && strings.Contains(r.Message, sub) {
			n++
		}
	}
	return n
}
