package integration_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"writ.dev/writ/internal/pgtest"
)

// pgSVIDTTL is the X.509-SVID lifetime of the drills' servers (agents'
// and workloads'): short, so that they renew (at half life) several
// times within a drill.
const pgSVIDTTL = 10 * time.Second

// pgPair is two servers, A and B, each with a data directory of its own,
// on one PostgreSQL database.
type pgPair struct {
	t      *testing.T
	dir    string
	url    string
	s      [2]*serverProc
	bundle string // PEM file of the bundle both publish
}

// pgDatastoreURL returns dsn (as pgtest gives it) as a postgres:// URL, as
// an operator passes it to --datastore.
func pgDatastoreURL(t *testing.T, dsn string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	q := url.Values{}
	q.Set("host", cfg.Host)
	q.Set("port", strconv.Itoa(int(cfg.Port)))
	q.Set("sslmode", "disable")
	u := url.URL{Scheme: "postgres", User: url.User(cfg.User), Path: "/" + cfg.Database, RawQuery: q.Encode()}
	return u.String()
}

// newPGPair starts two servers at once on a new database of c, with ttl
// as the X.509-SVID lifetime of agents and of entries that set none, and
// waits until both serve and publish the same bundle.
func newPGPair(t *testing.T, c *pgtest.Cluster, ttl time.Duration) *pgPair {
	t.Helper()
	pp := &pgPair{t: t, dir: shortTempDir(t), url: pgDatastoreURL(t, c.NewDatabase(t))}
	for i := range pp.s {
		pp.s[i] = launchServer(t, filepath.Join(pp.dir, fmt.Sprintf("s%d", i)),
			"--datastore", pp.url, "--default-x509-svid-ttl", ttl.String())
	}
	for _, s := range pp.s {
		s.waitReady()
	}
	// Each server publishes its CA through the shared bundle; once both
	// CAs are in, both servers show the same bundle.
	pem := pp.sameBundle()
	if n := strings.Count(pem, "BEGIN CERTIFICATE"); n != 2 {
		t.Fatalf("the bundle holds %d CA certificates, want one of each server:\n%s", n, pem)
	}
	pp.bundle = filepath.Join(pp.dir, "bundle.pem")
	if err := os.WriteFile(pp.bundle, []byte(pem), 0o600); err != nil {
		t.Fatal(err)
	}
	return pp
}

// sameBundle waits until every running server shows the same bundle, as
// PEM and as a SPIFFE bundle, and returns the PEM.
func (pp *pgPair) sameBundle() string {
	pp.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var pems, jwks []string
		for _, s := range pp.s {
			select {
			case <-s.done:
				continue
			default:
			}
			pems = append(pems, s.admin("bundle", "show"))
			jwks = append(jwks, s.admin("bundle", "show", "--format", "spiffe"))
		}
		// A JWKS lists the JWT keys in no particular order: compare
		// the bundles, not the bytes.
		same := len(slices.Compact(slices.Clone(pems))) == 1
		for _, doc := range jwks[1:] {
			a, err1 := spiffebundle.Parse(fanTD, []byte(jwks[0]))
			b, err2 := spiffebundle.Parse(fanTD, []byte(doc))
			if err1 != nil || err2 != nil {
				pp.t.Fatalf("bundle show --format spiffe: %v, %v", err1, err2)
			}
			same = same && a.Equal(b)
		}
		if same {
			return pems[0]
		}
		if time.Now().After(deadline) {
			pp.t.Fatalf("the servers publish different bundles:\n%s\n%s", strings.Join(pems, "\n"), strings.Join(jwks, "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (pp *pgPair) addr(i int) string { return pp.s[i].nodeAddress() }

func (pp *pgPair) token(i int, id string) string {
	return strings.TrimSpace(pp.s[i].admin("token", "generate", "--spiffe-id", id))
}

// entry creates an entry for the workloads of this uid under parent
// through server i and returns its ID.
func (pp *pgPair) entry(i int, id, parent string, extra ...string) string {
	return strings.TrimSpace(pp.s[i].admin(append([]string{"entry", "create", "--spiffe-id", id, "--parent-id", parent, "--selector", uidSelector}, extra...)...))
}

// serverCAs returns the subject key IDs (hex) of server i's own X.509
// CAs.
func (pp *pgPair) serverCAs(i int) map[string]bool {
	pp.t.Helper()
	raw, err := os.ReadFile(filepath.Join(pp.s[i].dataDir, "server-id"))
	if err != nil {
		pp.t.Fatal(err)
	}
	id := strings.TrimSpace(string(raw))
	var list []jsonAuthority
	pp.s[i].adminJSON(&list, "ca", "x509", "show")
	out := map[string]bool{}
	for _, a := range list {
		if a.ServerID == id {
			out[a.ID] = true
		}
	}
	if len(out) == 0 {
		pp.t.Fatalf("no X.509 CA of server %s in %+v", id, list)
	}
	return out
}

// logValue returns the value of key in the last line of log whose message
// is msg ("" if none).
func logValue(log, msg, key string) string {
	lines := strings.Split(log, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if !strings.Contains(lines[i], `msg="`+msg+`"`) {
			continue
		}
		for _, f := range strings.Fields(lines[i]) {
			if v, ok := strings.CutPrefix(f, key+"="); ok {
				return v
			}
		}
	}
	return ""
}

// waitLogField waits until p's log has a line with msg and key=value.
func waitLogField(t *testing.T, p *agentProc, msg, key, value string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for logValue(p.log.String(), msg, key) != value {
		if time.Now().After(deadline) {
			t.Fatalf("agent %s logged no %q with %s=%s within %s:\n%s", p.dataDir, msg, key, value, timeout, tail(p.log.String(), 30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// svidWatcher is a go-spiffe Workload API watcher: it keeps the SPIFFE IDs
// of the latest update and when each first appeared.
type svidWatcher struct {
	mu    sync.Mutex // guards ids, first
	ids   map[string]bool
	first map[string]time.Time
}

func watchSVIDs(t *testing.T, p *agentProc) *svidWatcher {
	t.Helper()
	w := &svidWatcher{first: map[string]time.Time{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = workloadapi.WatchX509Context(ctx, w, socketAddr(p))
	}()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

func (w *svidWatcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ids = map[string]bool{}
	for _, s := range c.SVIDs {
		id := s.ID.String()
		w.ids[id] = true
		if _, ok := w.first[id]; !ok {
			w.first[id] = now
		}
	}
}

func (w *svidWatcher) OnX509ContextWatchError(error) {}

// waitFor waits until the watcher's latest update holds id and returns
// when it first did.
func (w *svidWatcher) waitFor(t *testing.T, id string, timeout time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		w.mu.Lock()
		ok, at := w.ids[id], w.first[id]
		w.mu.Unlock()
		if ok {
			return at
		}
		if time.Now().After(deadline) {
			t.Fatalf("the watcher never received %s within %s", id, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// svidPoller fetches an agent's X.509-SVIDs over and over and records
// every moment it did not serve a valid SVID of each wanted ID.
type svidPoller struct {
	mu      sync.Mutex // guards fetches, fails, issuers
	fetches int
	fails   []string
	issuers map[string]bool // authority key IDs (hex) of the SVIDs served
	stop    chan struct{}
	done    chan struct{}
}

// pollSVIDs polls p every 100 ms until stopped: each fetch must succeed
// and hold, for every ID in want, an SVID valid now that verifies against
// the bundle in bundlePEM.
func pollSVIDs(t *testing.T, p *agentProc, bundlePEM string, want ...string) *svidPoller {
	t.Helper()
	raw, err := os.ReadFile(bundlePEM)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := x509bundle.Parse(fanTD, raw)
	if err != nil {
		t.Fatal(err)
	}
	sp := &svidPoller{issuers: map[string]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(sp.done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			svids, err := workloadapi.FetchX509SVIDs(ctx, socketAddr(p))
			cancel()
			now := time.Now()
			sp.mu.Lock()
			sp.fetches++
			if err != nil {
				sp.fails = append(sp.fails, fmt.Sprintf("%s: fetch: %v", now.Format(time.StampMilli), err))
			}
			for _, id := range want {
				i := slices.IndexFunc(svids, func(s *x509svid.SVID) bool { return s.ID.String() == id })
				if i < 0 {
					if err == nil {
						sp.fails = append(sp.fails, fmt.Sprintf("%s: no SVID for %s", now.Format(time.StampMilli), id))
					}
					continue
				}
				leaf := svids[i].Certificates[0]
				if now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter) {
					sp.fails = append(sp.fails, fmt.Sprintf("%s: SVID %s not valid now (%s to %s)", now.Format(time.StampMilli), id, leaf.NotBefore, leaf.NotAfter))
				}
				if _, _, err := x509svid.Verify(svids[i].Certificates, bundle); err != nil {
					sp.fails = append(sp.fails, fmt.Sprintf("%s: SVID %s does not verify: %v", now.Format(time.StampMilli), id, err))
				}
				sp.issuers[hex.EncodeToString(leaf.AuthorityKeyId)] = true
			}
			sp.mu.Unlock()
			select {
			case <-sp.stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(sp.finish)
	return sp
}

// finish stops the poller; it is idempotent.
func (sp *svidPoller) finish() {
	select {
	case <-sp.stop:
	default:
		close(sp.stop)
	}
	<-sp.done
}

// issuedBy reports whether an SVID served was signed by one of cas
// (subject key IDs, hex).
func (sp *svidPoller) issuedBy(cas map[string]bool) bool {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	for ski := range sp.issuers {
		if cas[ski] {
			return true
		}
	}
	return false
}

// check stops the poller and fails the test if any fetch came back
// without a valid SVID.
func (sp *svidPoller) check(t *testing.T, what string) {
	t.Helper()
	sp.finish()
	if len(sp.fails) > 0 {
		t.Errorf("%s: %d of %d fetches without a valid SVID, the first:\n%s", what, len(sp.fails), sp.fetches, strings.Join(sp.fails[:min(10, len(sp.fails))], "\n"))
	}
	t.Logf("%s: %d fetches, every one with valid SVIDs", what, sp.fetches)
}

// TestIntegrationPostgresTwoServers runs two real servers on one real
// PostgreSQL database: agent 1 attested at server A, agent 2 at server B
// with a token made at A (which then works at neither again); an entry
// created through A reaches a go-spiffe watcher of agent 2; both servers
// publish the same bundle. Then A is killed with SIGKILL while agent 1
// is connected to it and entries are being written through it: agent 1
// fails over to B, serves valid SVIDs throughout, renews through B, and
// every entry A acknowledged is there.
func TestIntegrationPostgresTwoServers(t *testing.T) {
	pp := newPGPair(t, pgtest.Shared(t), pgSVIDTTL)
	const agent1, agent2 = "spiffe://example.org/writ/agent/pg1", "spiffe://example.org/writ/agent/pg2"

	// Agent 1 is given both addresses and goes round them from a random
	// start: whichever server it holds its sync stream with is A from
	// here on (it may have attested at either).
	a1 := startAgent(t, pp.addr(0)+","+pp.addr(1), filepath.Join(pp.dir, "a1"), pp.bundle, pp.token(0, agent1))
	deadline := time.Now().Add(10 * time.Second)
	for logValue(a1.log.String(), "connected to the server", "server_address") == "" {
		if time.Now().After(deadline) {
			t.Fatalf("agent 1 connected to no server:\n%s", tail(a1.log.String(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
	at := logValue(a1.log.String(), "connected to the server", "server_address")
	A := slices.Index([]string{pp.addr(0), pp.addr(1)}, at)
	if A < 0 {
		t.Fatalf("agent 1 connected to %q, neither server:\n%s", at, tail(a1.log.String(), 20))
	}
	B := 1 - A
	t.Logf("agent 1 attested at %s and connected to %s (A)", logValue(a1.log.String(), "agent attested", "server_address"), at)

	// A token made at A attests agent 2 at B (given only B's address),
	// and is used up at both.
	tok := pp.token(A, agent2)
	a2 := startAgent(t, pp.addr(B), filepath.Join(pp.dir, "a2"), pp.bundle, tok)
	if got := logValue(a2.log.String(), "agent attested", "server_address"); got != pp.addr(B) {
		t.Fatalf("agent 2 attested at %q, want B %s", got, pp.addr(B))
	}
	for i, addr := range []string{pp.addr(A), pp.addr(B)} {
		out, errOut, code := runWrit(t, nil, "agent", "run", "--server-address", addr, "--trust-domain", "example.org",
			"--data-dir", filepath.Join(pp.dir, fmt.Sprintf("again%d", i)), "--socket-path", filepath.Join(pp.dir, fmt.Sprintf("again%d.sock", i)),
			"--trust-bundle", pp.bundle, "--join-token", tok)
		if code == 0 || !strings.Contains(out+errOut, "join token") || strings.Contains(out+errOut, tok) {
			t.Fatalf("used token again at %s: exit %d, output says nothing clear or leaks it:\n%s%s", addr, code, out, errOut)
		}
	}
	for _, s := range pp.s {
		var agents []struct {
			SPIFFEID string `json:"spiffe_id"`
		}
		s.adminJSON(&agents, "agent", "list")
		var ids []string
		for _, a := range agents {
			ids = append(ids, a.SPIFFEID)
		}
		slices.Sort(ids)
		if !slices.Equal(ids, []string{agent1, agent2}) {
			t.Fatalf("agent list at %s: %v", s.dataDir, ids)
		}
	}

	// An entry created through A reaches agent 2's watcher (B's stream).
	pp.entry(B, "spiffe://example.org/pg/first", agent2)
	w := watchSVIDs(t, a2)
	w.waitFor(t, "spiffe://example.org/pg/first", 20*time.Second)
	start := time.Now()
	pp.entry(A, "spiffe://example.org/pg/via-a", agent2)
	got := w.waitFor(t, "spiffe://example.org/pg/via-a", 20*time.Second)
	t.Logf("entry created through A reached agent 2's watcher (at B) %s after the CLI returned", got.Sub(start).Round(time.Millisecond))
	if pp.sameBundle() != mustRead(t, pp.bundle) {
		t.Fatal("the published bundle changed")
	}

	// Kill -9 A while agent 1 is connected to it and entries are being
	// written through it.
	const svid1 = "spiffe://example.org/pg/one"
	pp.entry(A, svid1, agent1)
	waitSVIDs(t, a1, []string{svid1})
	poll := pollSVIDs(t, a1, pp.bundle, svid1)
	var (
		mu    sync.Mutex // guards acked
		acked []string
	)
	stopWrites := make(chan struct{})
	writesDone := make(chan struct{})
	go func() {
		defer close(writesDone)
		for n := 0; ; n++ {
			select {
			case <-stopWrites:
				return
			default:
			}
			out, _, code := runWrit(t, nil, "entry", "create", "--spiffe-id", fmt.Sprintf("spiffe://example.org/pg/w%d", n),
				"--parent-id", agent1, "--selector", uidSelector, "--admin-socket", pp.s[A].socket)
			if code == 0 {
				mu.Lock()
				acked = append(acked, strings.TrimSpace(out))
				mu.Unlock()
			}
		}
	}()
	deadline = time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("fewer than 5 entries created through A within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	pp.s[A].kill()
	killed := time.Now()
	close(stopWrites)
	<-writesDone
	t.Logf("killed A after %d acknowledged entries", len(acked))

	waitLogField(t, a1, "connected to the server", "server_address", pp.addr(B), 30*time.Second)
	t.Logf("agent 1 connected to B %s after the kill", time.Since(killed).Round(time.Millisecond))

	// Every entry A acknowledged is at B, and reaches agent 1 through B.
	var entries []jsonEntry
	pp.s[B].adminJSON(&entries, "entry", "list", "--parent-id", agent1)
	have := map[string]bool{}
	for _, e := range entries {
		have[e.ID] = true
	}
	var want []string
	for i, id := range acked {
		if !have[id] {
			t.Errorf("entry %s, acknowledged by A, is not at B", id)
		}
		want = append(want, fmt.Sprintf("spiffe://example.org/pg/w%d", i))
	}
	// Entries whose creation A did not acknowledge may exist too.
	var ids []string
	for _, e := range entries {
		ids = append(ids, e.SPIFFEID)
	}
	for _, id := range append(want, svid1) {
		if !slices.Contains(ids, id) {
			t.Errorf("entry %s missing at B", id)
		}
	}
	slices.Sort(ids)
	waitSVIDs(t, a1, ids)

	// Agent 1's SVID is renewed through B: signed by B's CA, while
	// valid SVIDs were served throughout.
	bCAs := pp.serverCAs(B)
	deadline = time.Now().Add(2 * pgSVIDTTL)
	for {
		if poll.issuedBy(bCAs) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent 1's SVID was not renewed by B within %s", 2*pgSVIDTTL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Keep polling past one more lifetime of what A signed.
	for time.Since(killed) < pgSVIDTTL+2*time.Second {
		time.Sleep(100 * time.Millisecond)
	}
	poll.check(t, "agent 1 across the failover")
	if !a1.healthy() || !a2.healthy() {
		t.Fatal("an agent is unhealthy after the failover")
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestIntegrationPostgresOutage stops PostgreSQL under two running
// servers for longer than the agents' and the workloads' SVIDs live: both
// keep them valid (signing renewals without the database, the agents'
// own included), writes fail at once with a clear message, and when the
// database is back both accept writes again and pass them to each
// other's agents, and the agent records name SVIDs signed since, without
// a restart or a new attestation.
func TestIntegrationPostgresOutage(t *testing.T) {
	c := pgtest.New(t)
	// Servers accept an agent SVID their records do not name only while
	// they read the agent list within one agent SVID lifetime, so an
	// agent's last renewal in the outage lives until between 1.5 and 2
	// lifetimes after that read. The database must be back before then:
	// twice pgSVIDTTL leaves it about 9 s to start after the hold.
	const ttl = 2 * pgSVIDTTL
	pp := newPGPair(t, c, ttl)
	var agents [2]*agentProc
	var polls [2]*svidPoller
	for i := range agents {
		id := fmt.Sprintf("spiffe://example.org/writ/agent/out%d", i)
		agents[i] = startAgent(t, pp.addr(i), filepath.Join(pp.dir, fmt.Sprintf("a%d", i)), pp.bundle, pp.token(i, id))
		svid := fmt.Sprintf("spiffe://example.org/out/%d", i)
		pp.entry(i, svid, id, "--x509-ttl", ttl.String())
		waitSVIDs(t, agents[i], []string{svid})
		polls[i] = pollSVIDs(t, agents[i], pp.bundle, svid)
	}

	c.Stop(t)
	stopped := time.Now()
	for i, s := range pp.s {
		for _, args := range [][]string{
			{"entry", "create", "--spiffe-id", "spiffe://example.org/out/never", "--parent-id", "spiffe://example.org/writ/agent/out0", "--selector", uidSelector},
			{"token", "generate", "--spiffe-id", "spiffe://example.org/writ/agent/never"},
		} {
			start := time.Now()
			out, errOut, code := runWrit(t, nil, append(args, "--admin-socket", s.socket)...)
			took := time.Since(start)
			if code == 0 || !strings.Contains(errOut, "datastore unavailable, retry later") || took > 15*time.Second {
				t.Errorf("server %d: writ %s during the outage: exit %d after %s, stdout %q, stderr %q; want a quick failure saying the datastore is unavailable",
					i, args[0], code, took.Round(time.Millisecond), out, errOut)
			} else {
				t.Logf("server %d: writ %s during the outage failed in %s: %s", i, args[0], took.Round(time.Millisecond), strings.TrimSpace(errOut))
			}
		}
	}
	// Hold the outage past the SVIDs' lifetime: they must be renewed
	// during it.
	for time.Since(stopped) < ttl+time.Second {
		time.Sleep(100 * time.Millisecond)
	}
	for i, s := range pp.s {
		select {
		case <-s.done:
			t.Fatalf("server %d exited during the outage: %v", i, s.err)
		default:
		}
	}
	for i := range agents {
		id := fmt.Sprintf("spiffe://example.org/writ/agent/out%d", i)
		lines := strings.Split(pp.s[0].log.String()+pp.s[1].log.String(), "\n")
		if !slices.ContainsFunc(lines, func(l string) bool {
			return strings.Contains(l, "agent SVID renewed while the datastore is unavailable") && strings.Contains(l, id)
		}) {
			t.Errorf("no server logged renewing agent %d's SVID during the outage", i)
		}
	}
	c.Start(t)
	restarted := time.Now()

	// Both accept writes again, and each one's writes reach the other's
	// agent.
	for i, s := range pp.s {
		other := 1 - i
		parent := fmt.Sprintf("spiffe://example.org/writ/agent/out%d", other)
		deadline := time.Now().Add(60 * time.Second)
		var svid string
		for n := 0; ; n++ {
			svid = fmt.Sprintf("spiffe://example.org/out/%d/after-%d", i, n)
			_, errOut, code := runWrit(t, nil, "entry", "create", "--spiffe-id", svid, "--parent-id", parent, "--selector", uidSelector, "--admin-socket", s.socket)
			if code == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("server %d accepts no write within 60s of the database's return: %s", i, errOut)
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("server %d accepted a write %s after the database returned", i, time.Since(restarted).Round(time.Millisecond))
		deadline = time.Now().Add(30 * time.Second)
		for {
			var entries []jsonEntry
			pp.s[other].adminJSON(&entries, "entry", "list", "--parent-id", parent)
			if slices.ContainsFunc(entries, func(e jsonEntry) bool { return e.SPIFFEID == svid }) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("entry %s written through server %d is not at server %d", svid, i, other)
			}
			time.Sleep(50 * time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := waitForSVID(ctx, agents[other], svid)
		cancel()
		if err != nil {
			t.Fatalf("entry %s written through server %d after the outage did not reach agent %d: %v", svid, i, other, err)
		}
	}
	// Each agent's record names an SVID signed since the database
	// stopped (the one it attested with expired during the outage).
	for i := range agents {
		id := fmt.Sprintf("spiffe://example.org/writ/agent/out%d", i)
		deadline := time.Now().Add(30 * time.Second)
		for {
			var shown struct {
				CertNotAfter int64 `json:"cert_not_after"`
			}
			pp.s[1-i].adminJSON(&shown, "agent", "show", "--spiffe-id", id)
			if time.Unix(shown.CertNotAfter, 0).After(restarted) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("agent %d's record names an SVID that expired at %s, before the database returned", i, time.Unix(shown.CertNotAfter, 0))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for i, p := range polls {
		p.check(t, fmt.Sprintf("agent %d through the outage", i))
	}
	for i, p := range agents {
		if !p.healthy() {
			t.Errorf("agent %d unhealthy after the outage", i)
		}
	}
}

// waitForSVID waits until p serves an SVID for id (among others).
func waitForSVID(ctx context.Context, p *agentProc, id string) error {
	for {
		fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		svids, err := workloadapi.FetchX509SVIDs(fctx, socketAddr(p))
		cancel()
		if err == nil && slices.ContainsFunc(svids, func(s *x509svid.SVID) bool { return s.ID.String() == id }) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no SVID for %s (last error %v): %w", id, err, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestIntegrationPostgresTokenRace starts 8 agents at once with one join
// token, half of them at each of two servers on one database: exactly one
// attests; the others exit saying the token is not valid.
func TestIntegrationPostgresTokenRace(t *testing.T) {
	pp := newPGPair(t, pgtest.Shared(t), pgSVIDTTL)
	const id = "spiffe://example.org/writ/agent/race"
	tok := pp.token(0, id)
	agents := make([]*agentProc, 8)
	for i := range agents {
		agents[i] = launchAgent(t, pp.addr(i%2), filepath.Join(pp.dir, fmt.Sprintf("r%d", i)), pp.bundle, tok)
	}
	var running []*agentProc
	deadline := time.Now().Add(60 * time.Second)
	for {
		running = nil
		for _, p := range agents {
			select {
			case <-p.done:
			default:
				running = append(running, p)
			}
		}
		if len(running) <= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 8 agents still running after 60s, want 1", len(running))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(running) != 1 {
		t.Fatal("every agent exited: none attested")
	}
	winner := running[0]
	winner.waitHealthy(true, 30*time.Second)
	for _, p := range agents {
		if p == winner {
			continue
		}
		out := p.log.String()
		if p.err == nil || !strings.Contains(out, "join token") || strings.Contains(out, tok) || strings.Contains(out, "agent attested") {
			t.Errorf("losing agent %s: exit %v; want a failure naming the join token, without it:\n%s", p.dataDir, p.err, tail(out, 10))
		}
	}
	for i, s := range pp.s {
		var list []struct {
			SPIFFEID string `json:"spiffe_id"`
		}
		s.adminJSON(&list, "agent", "list")
		if len(list) != 1 || list[0].SPIFFEID != id {
			t.Errorf("agent list at server %d: %+v, want only %s", i, list, id)
		}
	}
	t.Logf("the agent at %s attested", logValue(winner.log.String(), "agent attested", "server_address"))
}
