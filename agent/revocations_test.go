package agent_test

import (
	"log/slog"
	"testing"
	"time"

	"writ.dev/writ/agent"
	"writ.dev/writ/agent/internal/fakenode"
	"writ.dev/writ/agent/revocation"
	nodev1 "writ.dev/writ/ca/api/node/v1"
)

// TestRevocationsPushedAndSaved: revocations pushed on Sync are in force
// at once, and an agent restarted while the server is down still has
// them; each is dropped once it has expired.
func TestRevocationsPushedAndSaved(t *testing.T) {
	e := newEnv(t, fakenode.Options{})
	r := e.start(e.attestConfig())
	e.ready(r)
	now := e.clk.Now()
	web := "spiffe://" + e.srv.TrustDomain().Name() + "/web"
	e.srv.Revoke(
		&nodev1.Revocation{Jti: "t1", RevokedAt: now.Unix(), ExpiresAt: now.Add(time.Minute).Unix()},
		&nodev1.Revocation{ClientId: web, RevokedAt: now.Unix(), ExpiresAt: now.Add(time.Hour).Unix()},
		&nodev1.Revocation{Jti: "bad", ClientId: web, ExpiresAt: now.Add(time.Hour).Unix()},
	)
	list := r.a.Revocations()
	eventually(t, "revocations applied", func() bool { return list.Len() == 2 })
	if !list.Revoked("t1", "", "", now) || !list.Revoked("t9", web, "", now) || list.Revoked("t9", web, "", now.Add(time.Second)) {
		t.Error("wrong revocations in force")
	}
	if !e.logs.has(slog.LevelDebug, "revocations synced") || !e.logs.has(slog.LevelWarn, "malformed revocations") {
		t.Error("not logged")
	}

	// Restart with the server down: the saved revocations are in force
	// before any Sync.
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	e.srv.Stop()
	r = e.start(e.config())
	list = r.a.Revocations()
	eventually(t, "saved revocations loaded", func() bool { return list.Len() == 2 })
	if !list.Revoked("t1", "", "", now) || !list.Revoked("", "", web, now) {
		t.Error("saved revocations not in force")
	}
	// t1 expires (plus the skew validators allow); the other stays.
	e.clk.Advance(time.Minute + revocation.Grace)
	eventually(t, "expired revocation dropped", func() bool { return list.Len() == 1 })
	if list.Revoked("t1", "", "", now) || !list.Revoked("", "", web, now) {
		t.Error("wrong revocation dropped")
	}

	// Back with the server: its full list replaces the agent's.
	// The clock is moved only until the agent connects (see
	// fakenode.Stats.Conns).
	conns := e.srv.Stats().Conns
	e.srv.Restart()
	e.advanceUntil("reconnection", agent.ReconnectBackoff.Max, func() bool { return e.srv.Stats().Conns > conns })
	e.ready(r)
	eventually(t, "full list applied", func() bool { return list.Len() == 1 })
}
