package agent_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"writ.dev/writ/agent"
	"writ.dev/writ/agent/internal/fakenode"
	"writ.dev/writ/agent/nodeclient"
	"writ.dev/writ/agent/rotate"
	"writ.dev/writ/agent/svidcache"
	nodev1 "writ.dev/writ/ca/api/node/v1"
)

func TestAttestThenRestartWithoutToken(t *testing.T) {
	e := newEnv(t, fakenode.Options{})
	w := e.srv.Entry("/web", "unix:uid:1000")
	e.srv.SetEntries(w)

	r := e.start(e.attestConfig())
	e.ready(r)
	if !r.a.Healthy() || r.a.ID() != e.srv.AgentID() {
		t.Fatalf("healthy %v, ID %s", r.a.Healthy(), r.a.ID())
	}
	if svidFor(r.a.Cache(), w.Id, mustSels(t, "unix:uid:1000")) == nil {
		t.Fatal("entry's SVID not in the cache")
	}
	for _, name := range []string{agent.StateFile} {
		fi, err := os.Stat(filepath.Join(e.dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s has mode %v", name, fi.Mode().Perm())
		}
	}
	if fi, err := os.Stat(e.dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("data dir: %v %v", fi.Mode().Perm(), err)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}

	// Restart without a token: reconnects with the saved SVID.
	r2 := e.start(e.config())
	e.ready(r2)
	if svidFor(r2.a.Cache(), w.Id, mustSels(t, "unix:uid:1000")) == nil {
		t.Fatal("no SVID after restart")
	}
	if err := r2.stop(); err != nil {
		t.Fatal(err)
	}
	// Restart with a token: the token is ignored.
	cfg := e.config()
	cfg.JoinToken = e.srv.AddJoinToken()
	r3 := e.start(cfg)
	e.ready(r3)
	if !e.logs.has(slog.LevelInfo, "join token ignored") {
		t.Fatal("no INFO log about the ignored token")
	}
	if n := e.srv.Stats().Attests; n != 1 {
		t.Fatalf("%d attestations, want 1", n)
	}
	if strings.Contains(e.logs.text(), cfg.JoinToken) {
		t.Fatal("join token in the logs")
	}
}

func TestRefusesUnauthenticatedServer(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts fakenode.Options
	}{
		{"certificate from another CA", fakenode.Options{ForeignServerCA: true}},
		{"wrong SPIFFE ID", fakenode.Options{ServerID: id(td, "/not/the/server")}},
		{"agent ID instead of server ID", fakenode.Options{ServerID: id(td, "/agent/node1")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.opts)
			err := e.runErr(e.attestConfig())
			if !errors.Is(err, nodeclient.ErrServerNotTrusted) {
				t.Fatalf("Run = %v, want ErrServerNotTrusted", err)
			}
			if n := e.srv.Stats().Attests; n != 0 {
				t.Fatalf("the server received %d Attest calls: the token was sent to an unauthenticated server", n)
			}
			if _, err := os.Stat(filepath.Join(e.dir, agent.StateFile)); err == nil {
				t.Fatal("SVID saved")
			}
		})
	}
}

func TestStartRefusals(t *testing.T) {
	e := newEnv(t, fakenode.Options{})
	noTrust := e.config()
	noTrust.JoinToken = e.srv.AddJoinToken()
	if err := e.runErr(noTrust); !errors.Is(err, agent.ErrNoTrustBundle) || !strings.Contains(err.Error(), "--trust-bundle") {
		t.Fatalf("no trust bundle: %v", err)
	}
	if err := e.runErr(e.config()); !errors.Is(err, agent.ErrNoIdentity) || !strings.Contains(err.Error(), "--join-token") {
		t.Fatalf("no token: %v", err)
	}
	if n := e.srv.Stats().Attests; n != 0 {
		t.Fatalf("%d attestations", n)
	}
	bad := e.attestConfig()
	bad.JoinToken = "not-a-token"
	if err := e.runErr(bad); !errors.Is(err, nodeclient.ErrPermissionDenied) {
		t.Fatalf("bad token: %v", err)
	}
	// Config errors.
	for name, cfg := range map[string]agent.Config{
		"no trust domain":  {DataDir: e.dir},
		"no data dir":      {TrustDomain: td},
		"bad address":      {TrustDomain: td, DataDir: e.dir, ServerAddress: "nohostport"},
		"both bootstraps":  {TrustDomain: td, DataDir: e.dir, TrustBundlePath: "x", InsecureBootstrap: true},
		"long socket path": {TrustDomain: td, DataDir: e.dir, SocketPath: "/" + strings.Repeat("s", 110)},
		"long data dir":    {TrustDomain: td, DataDir: "/" + strings.Repeat("d", 100)},
	} {
		if _, err := agent.New(cfg); !errors.Is(err, agent.ErrConfig) {
			t.Errorf("%s: New = %v", name, err)
		}
	}
}

func TestInsecureBootstrap(t *testing.T) {
	e := newEnv(t, fakenode.Options{})
	cfg := e.config()
	cfg.JoinToken = e.srv.AddJoinToken()
	cfg.InsecureBootstrap = true
	r := e.start(cfg)
	e.ready(r)
	if !e.logs.has(slog.LevelWarn, "insecure bootstrap") {
		t.Fatal("no WARN about insecure bootstrap")
	}
	saved, err := os.ReadFile(filepath.Join(e.dir, agent.StateFile))
	if err != nil || !strings.Contains(string(saved), "x509-svid") {
		t.Fatalf("bundle not saved: %v", err)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	// From then on the server is authenticated with the saved bundle.
	r2 := e.start(e.config())
	e.ready(r2)
}

func TestNewEntrySignedAtOnceInOneBatch(t *testing.T) {
	e := newEnv(t, fakenode.Options{})
	var initial []*nodev1.Entry
	for i := range 50 {
		initial = append(initial, e.srv.Entry("/svc/"+string(rune('a'+i%26))+"/"+string(rune('a'+i/26)), "unix:uid:1"))
	}
	e.srv.SetEntries(initial...)
	r := e.start(e.attestConfig())
	e.ready(r)
	if got := len(r.a.Cache().X509SVIDs(mustSels(t, "unix:uid:1"))); got != 50 {
		t.Fatalf("%d SVIDs after ready, want 50", got)
	}
	if sizes := e.srv.Stats().BatchSizes; !slices.Equal(sizes, []int{50}) {
		t.Fatalf("batch sizes %v, want one batch of 50", sizes)
	}

	sub := r.a.Cache().Subscribe(mustSels(t, "unix:uid:2"))
	defer sub.Close()
	w := e.srv.Entry("/new", "unix:uid:2")
	start := time.Now()
	e.srv.SetEntries(append(initial, w)...)
	for {
		select {
		case <-sub.Changed():
		case <-time.After(10 * time.Second):
			t.Fatal("new entry not signed")
		}
		if len(sub.State().X509SVIDs) == 1 {
			break
		}
	}
	elapsed := time.Since(start)
	t.Logf("new entry signed %v after the sync message was sent", elapsed)
	if elapsed > time.Second {
		t.Fatalf("new entry took %v to sign", elapsed)
	}
}

func TestOutageServesCacheUntilExpiryThenRecovers(t *testing.T) {
	e := newEnv(t, fakenode.Options{})
	w := e.srv.Entry("/web", "unix:uid:1000")
	e.srv.SetEntries(w)
	r := e.start(e.attestConfig())
	e.ready(r)
	sel := mustSels(t, "unix:uid:1000")
	s := svidFor(r.a.Cache(), w.Id, sel)
	if s == nil {
		t.Fatal("no SVID")
	}
	// Warm a JWT-SVID while connected.
	if _, err := r.a.Cache().FetchJWTSVID(t.Context(), w.Id, []string{"warm"}); err != nil {
		t.Fatal(err)
	}

	e.srv.Stop()
	eventually(t, "the agent to notice the outage", func() bool { return e.logs.has(slog.LevelWarn, "connection to the server lost") })
	// JWT requests fail fast with Unavailable.
	start := time.Now()
	_, err := r.a.Cache().FetchJWTSVID(t.Context(), w.Id, []string{"new-audience"})
	elapsed := time.Since(start)
	t.Logf("JWT-SVID request during the outage failed in %v: %v", elapsed, err)
	if !errors.Is(err, svidcache.ErrUnavailable) || status.Code(err) != codes.Unavailable {
		t.Fatalf("JWT during outage: %v (code %v)", err, status.Code(err))
	}
	if elapsed >= time.Second {
		t.Fatalf("JWT during outage took %v", elapsed)
	}
	// The cached SVID is served until its last instant, never after.
	e.clk.Set(s.NotAfter.Add(-time.Second))
	if got := svidFor(r.a.Cache(), w.Id, sel); got == nil {
		t.Fatal("cached SVID not served during the outage")
	}
	e.clk.Set(s.NotAfter)
	if got := r.a.Cache().X509SVIDs(sel); len(got) != 0 {
		t.Fatalf("expired SVID served: %v", got[0].NotAfter)
	}
	if !r.a.Healthy() {
		t.Fatal("unhealthy with a valid agent SVID")
	}

	// Recovery without restart. The clock is moved only until the agent
	// connects (see fakenode.Stats.Conns).
	conns := e.srv.Stats().Conns
	e.srv.Restart()
	e.advanceUntil("reconnection", agent.ReconnectBackoff.Max, func() bool { return e.srv.Stats().Conns > conns })
	eventually(t, "a new SVID", func() bool { return svidFor(r.a.Cache(), w.Id, sel) != nil })
	if got := svidFor(r.a.Cache(), w.Id, sel); !got.NotAfter.After(s.NotAfter) {
		t.Fatal("not a new SVID")
	}
	if _, err := r.a.Cache().FetchJWTSVID(t.Context(), w.Id, []string{"after"}); err != nil {
		t.Fatalf("JWT after recovery: %v", err)
	}
}

func TestReconnectConvergesAndSpreads(t *testing.T) {
	e := newEnv(t, fakenode.Options{})
	keep := e.srv.Entry("/keep", "unix:uid:1")
	gone := e.srv.Entry("/gone", "unix:uid:1")
	e.srv.SetEntries(keep, gone)
	r := e.start(e.attestConfig())
	e.ready(r)
	sel := mustSels(t, "unix:uid:1")

	e.srv.Stop()
	eventually(t, "outage noticed", func() bool { return e.logs.has(slog.LevelWarn, "connection to the server lost") })
	added := e.srv.Entry("/added", "unix:uid:1")
	e.srv.SetEntries(keep, added) // while disconnected: nothing is pushed
	e.srv.Restart()
	syncs := e.srv.Stats().Syncs
	// No immediate reconnection after a broken connection: a random
	// delay on the agent's clock comes first. Once the agent waits on
	// it, it has not reconnected.
	e.waitTimerWithin(agent.ReconnectSpread)
	if n := e.srv.Stats().Syncs; n != syncs {
		t.Fatal("reconnected without the random delay")
	}
	e.advanceUntil("reconnection", agent.ReconnectSpread, func() bool { return e.srv.Stats().Syncs > syncs })
	eventually(t, "convergence", func() bool {
		got := r.a.Cache().X509SVIDs(sel)
		return len(got) == 2 && svidFor(r.a.Cache(), added.Id, sel) != nil && svidFor(r.a.Cache(), keep.Id, sel) != nil
	})
	if _, ok := r.a.Cache().Entry(gone.Id); ok {
		t.Fatal("entry deleted while disconnected is still cached")
	}
}

func TestRotationAtHalfLife(t *testing.T) {
	e := newEnv(t, fakenode.Options{X509TTL: time.Hour})
	w := e.srv.Entry("/web", "unix:uid:1")
	e.srv.SetEntries(w)
	r := e.start(e.attestConfig())
	e.ready(r)
	sel := mustSels(t, "unix:uid:1")
	s := svidFor(r.a.Cache(), w.Id, sel)
	// The lifetime counts from receipt (the fake clock has not moved
	// since), not from the backdated NotBefore.
	start := rotate.Start(s.NotBefore, e.clk.Now())
	life := s.NotAfter.Sub(start)

	// Just before the earliest rotation time (half life minus the
	// largest jitter): nothing.
	e.waitTimers(3)
	e.clk.Set(start.Add(life/2 - life/10 - time.Second))
	// The agent's loops have handled the move and wait on their timers
	// again: whatever they were to do at this time is done.
	e.waitTimers(3)
	if n := e.srv.Signed(w.Id); n != 1 {
		t.Fatalf("rotated before the threshold (%d signings)", n)
	}
	if got := svidFor(r.a.Cache(), w.Id, sel); got != s {
		t.Fatal("SVID replaced before the threshold")
	}
	// Just after half life: rotated.
	e.clk.Set(start.Add(life/2 + time.Second))
	eventually(t, "rotation", func() bool { return e.srv.Signed(w.Id) == 2 })
	eventually(t, "the new SVID in the cache", func() bool {
		got := svidFor(r.a.Cache(), w.Id, sel)
		return got != nil && got.NotAfter.After(s.NotAfter)
	})
}

// JWT-SVIDs asked for while the agent reconnects to present its renewed
// SVID are signed through the new connection: one whose call was in
// flight when the old connection closed (it failed with "the client
// connection is closing"), and one asked for before the new connection
// synced (it failed as not connected).
func TestJWTSVIDAcrossAgentRenewal(t *testing.T) {
	e := newEnv(t, fakenode.Options{AgentTTL: 4 * time.Hour, X509TTL: 24 * time.Hour})
	w := e.srv.Entry("/web", "unix:uid:1")
	e.srv.SetEntries(w)
	r := e.start(e.attestConfig())
	e.ready(r)
	old := readAgentCert(t, e.dir)
	start := rotate.Start(old.NotBefore, e.clk.Now())
	life := old.NotAfter.Sub(start)
	syncs := e.srv.Stats().Syncs

	fetch := func(aud string) <-chan error {
		done := make(chan error, 1)
		go func() {
			_, err := r.a.Cache().FetchJWTSVID(t.Context(), w.Id, []string{aud})
			done <- err
		}()
		return done
	}
	e.srv.HoldJWT(true)
	inFlight := fetch("in-flight")
	eventually(t, "the JWT-SVID call at the server", func() bool { return e.srv.Stats().JWTHeld == 1 })

	// The renewal ends the session, closing its connection under the
	// call; the next session is held before it syncs.
	e.srv.HoldSync(true)
	e.waitTimers(3)
	e.clk.Set(start.Add(life/2 + time.Second))
	eventually(t, "the renewal", func() bool { return e.srv.Stats().Renewals == 1 })
	eventually(t, "the next session", func() bool { return e.srv.Stats().Syncs > syncs })
	between := fetch("between")

	e.srv.HoldSync(false)
	e.srv.HoldJWT(false)
	for name, done := range map[string]<-chan error{"in flight": inFlight, "between sessions": between} {
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("JWT-SVID asked for %s: %v", name, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("JWT-SVID asked for %s: no answer", name)
		}
	}
}

func readAgentCert(t *testing.T, dir string) *x509.Certificate {
	t.Helper()
	chain, err := agent.SavedSVID(dir)
	if err != nil {
		t.Fatal(err)
	}
	return chain[0]
}

func TestAgentSVIDRenewedAtHalfLife(t *testing.T) {
	e := newEnv(t, fakenode.Options{AgentTTL: 4 * time.Hour, X509TTL: 24 * time.Hour})
	e.srv.SetEntries(e.srv.Entry("/web", "unix:uid:1"))
	r := e.start(e.attestConfig())
	e.ready(r)
	old := readAgentCert(t, e.dir)
	start := rotate.Start(old.NotBefore, e.clk.Now()) // received at the current fake time
	life := old.NotAfter.Sub(start)
	syncs := e.srv.Stats().Syncs

	e.waitTimers(3)
	e.clk.Set(start.Add(life/2 - life/10 - time.Second))
	// The agent's loops have handled the move and wait on their timers
	// again: whatever they were to do at this time is done.
	e.waitTimers(3)
	if n := e.srv.Stats().Renewals; n != 0 {
		t.Fatalf("renewed before the threshold")
	}
	e.clk.Set(start.Add(life/2 + time.Second))
	eventually(t, "renewal", func() bool { return e.srv.Stats().Renewals == 1 })
	// It reconnects with the new certificate.
	eventually(t, "reconnection", func() bool { return e.srv.Stats().Syncs > syncs })
	if cur := readAgentCert(t, e.dir); !cur.NotAfter.After(old.NotAfter) {
		t.Fatal("renewed SVID not saved")
	}
	if !r.a.Healthy() {
		t.Fatal("unhealthy after renewal")
	}
}

func TestEvictedAgentDropsSVIDsAndReportsUnhealthy(t *testing.T) {
	e := newEnv(t, fakenode.Options{})
	w := e.srv.Entry("/web", "unix:uid:1")
	e.srv.SetEntries(w)
	r := e.start(e.attestConfig())
	e.ready(r)
	sel := mustSels(t, "unix:uid:1")
	health := healthClient(t, r.a.AdminSocketPath())
	if st := check(t, health); st != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health %v", st)
	}

	e.srv.Evict(true)
	e.advanceUntil("eviction handled", agent.ReconnectSpread, func() bool { return !r.a.Healthy() })
	if got := r.a.Cache().X509SVIDs(sel); len(got) != 0 {
		t.Fatal("SVIDs still served after eviction")
	}
	if st := check(t, health); st != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health after eviction %v", st)
	}
	if !e.logs.has(slog.LevelError, "refuses this agent") {
		t.Fatal("no ERROR log")
	}
	// Unbanned: it recovers on its own.
	// The clock is moved only until the agent connects (see
	// fakenode.Stats.Conns).
	conns := e.srv.Stats().Conns
	e.srv.Evict(false)
	e.advanceUntil("reconnection", agent.ReconnectBackoff.Max, func() bool { return e.srv.Stats().Conns > conns })
	eventually(t, "recovery", func() bool {
		return r.a.Healthy() && svidFor(r.a.Cache(), w.Id, sel) != nil
	})
}

func healthClient(t *testing.T, socket string) healthpb.HealthClient {
	conn, err := grpc.NewClient("unix:"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return healthpb.NewHealthClient(conn)
}

func check(t *testing.T, c healthpb.HealthClient) healthpb.HealthCheckResponse_ServingStatus {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetStatus()
}

func TestMalformedEntriesSkipped(t *testing.T) {
	e := newEnv(t, fakenode.Options{})
	good := e.srv.Entry("/good", "unix:uid:1")
	e.srv.SetEntries(good)
	r := e.start(e.attestConfig())
	e.ready(r)
	sel := mustSels(t, "unix:uid:1")

	badSel := e.srv.Entry("/bad-selector", "unix:uid:01")
	otherTD := e.srv.Entry("/x", "unix:uid:1")
	otherTD.SpiffeId = "spiffe://other.org/x"
	badID := e.srv.Entry("/y", "unix:uid:1")
	badID.Id = "not-a-uuid\x00"
	badDNS := e.srv.Entry("/z", "unix:uid:1")
	badDNS.DnsNames = []string{"UPPER.example.org"}
	noSel := e.srv.Entry("/n")
	badTTL := e.srv.Entry("/t", "unix:uid:1")
	badTTL.X509SvidTtl = -5
	// An update that turns the good entry malformed removes it.
	goodBroken := &nodev1.Entry{Id: good.Id, SpiffeId: "spiffe://example.org/good/../x", Selectors: good.Selectors}
	ok := e.srv.Entry("/ok", "unix:uid:1")
	e.srv.Store(ok)
	e.srv.Push(&nodev1.SyncResponse{
		Entries:         []*nodev1.Entry{badSel, otherTD, badID, badDNS, noSel, badTTL, ok},
		DeletedEntryIds: []string{"../../etc"},
		Bundle:          []byte("{not json"),
	})
	eventually(t, "the valid entry signed", func() bool { return svidFor(r.a.Cache(), ok.Id, sel) != nil })
	for _, b := range []*nodev1.Entry{badSel, otherTD, badDNS, noSel, badTTL} {
		if _, found := r.a.Cache().Entry(b.Id); found {
			t.Fatalf("malformed entry %s cached", b.SpiffeId)
		}
	}
	e.srv.Push(&nodev1.SyncResponse{Entries: []*nodev1.Entry{goodBroken}})
	eventually(t, "the broken update to remove the entry", func() bool {
		_, found := r.a.Cache().Entry(good.Id)
		return !found
	})
	if r.a.Cache().Bundle() == nil || !r.a.Healthy() {
		t.Fatal("malformed bundle replaced the good one, or the agent broke")
	}
	if strings.Contains(e.logs.text(), "unix:uid:01") {
		t.Fatal("selector value in the logs")
	}
}

func TestExpiredSavedSVID(t *testing.T) {
	e := newEnv(t, fakenode.Options{AgentTTL: time.Hour})
	e.srv.SetEntries(e.srv.Entry("/web", "unix:uid:1"))
	r := e.start(e.attestConfig())
	e.ready(r)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(2 * time.Hour)
	err := e.runErr(e.config())
	if !errors.Is(err, agent.ErrAgentSVIDExpired) || !strings.Contains(err.Error(), "--join-token") {
		t.Fatalf("expired SVID, no token: %v", err)
	}
	// With a new token, it attests again.
	cfg := e.config()
	cfg.JoinToken = e.srv.AddJoinToken()
	r2 := e.start(cfg)
	e.ready(r2)
	if n := e.srv.Stats().Attests; n != 2 {
		t.Fatalf("%d attestations, want 2", n)
	}
}

func TestAgentSVIDExpiryDuringOutageStopsRun(t *testing.T) {
	e := newEnv(t, fakenode.Options{AgentTTL: time.Hour})
	r := e.start(e.attestConfig())
	e.ready(r)
	e.srv.Stop()
	e.advanceUntil("Run to end", 10*time.Minute, func() bool {
		select {
		case <-r.done:
			return true
		default:
			return false
		}
	})
	if !errors.Is(r.err, agent.ErrAgentSVIDExpired) {
		t.Fatalf("Run = %v", r.err)
	}
}

func TestInconsistentDataDir(t *testing.T) {
	e := newEnv(t, fakenode.Options{})
	r := e.start(e.attestConfig())
	e.ready(r)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(e.dir, agent.StateFile)
	data, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	var j map[string]any
	if err := json.Unmarshal(data, &j); err != nil {
		t.Fatal(err)
	}
	delete(j, "key")
	if data, err = json.Marshal(j); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(state, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.runErr(e.config()); !errors.Is(err, agent.ErrInconsistentState) {
		t.Fatalf("missing key: %v", err)
	}
	// Looser permissions are refused too.
	if err := os.Chmod(state, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.runErr(e.config()); err == nil || !strings.Contains(err.Error(), "open to other users") {
		t.Fatalf("loose key file: %v", err)
	}
}

// TestRetriesBeforeAgentSVIDExpires: however far a long outage has
// backed off the agent's reconnections, it tries again in its SVID's last
// second, and so renews it if the server is back by then.
func TestRetriesBeforeAgentSVIDExpires(t *testing.T) {
	e := newEnv(t, fakenode.Options{AgentTTL: time.Hour})
	r := e.start(e.attestConfig())
	e.ready(r)
	certs, err := agent.SavedSVID(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	notAfter := certs[0].NotAfter
	e.srv.Stop()
	// An hour of failed attempts: the backoff reaches its maximum.
	for e.clk.Now().Before(notAfter.Add(-10 * time.Second)) {
		e.clk.Advance(5 * time.Second)
		time.Sleep(time.Millisecond)
	}
	for e.clk.Now().Before(notAfter.Add(-time.Second)) {
		e.clk.Advance(100 * time.Millisecond)
		time.Sleep(time.Millisecond)
	}
	renewals := e.srv.Stats().Renewals
	e.srv.Restart()
	for e.srv.Stats().Renewals == renewals {
		if !e.clk.Now().Before(notAfter) {
			t.Fatal("no renewal in the agent SVID's last second")
		}
		// Real time for a connection and a renewal between steps.
		time.Sleep(100 * time.Millisecond)
		if e.srv.Stats().Renewals != renewals {
			break
		}
		e.clk.Advance(50 * time.Millisecond)
	}
	select {
	case <-r.done:
		t.Fatalf("Run ended: %v", r.err)
	default:
	}
	if certs, err := agent.SavedSVID(e.dir); err != nil || !certs[0].NotAfter.After(notAfter) {
		t.Fatalf("the agent SVID was not renewed: %v", err)
	}
}
