package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
)

// errNoWorkloadAPI: the agent does not serve the Workload API, so the
// figures that need it cannot be measured.
var errNoWorkloadAPI = errors.New("the agent's Workload API is not available")

const (
	agentID = "spiffe://bench.test/writ/agent/bench"
	// bulkUIDBase is the first uid of the selectors of bulk entries: no
	// process of this benchmark runs as it, so they match nobody here
	// but still make the agent sign, cache and index them.
	bulkUIDBase = 2_000_000_000
	// socketWait is how long the agent has to create its Workload API
	// socket once it is healthy.
	socketWait = 15 * time.Second
	// idleQuiet and idleMax: memory is read after the server and agent
	// used no CPU for idleQuiet (waiting at most idleMax).
	idleQuiet = 500 * time.Millisecond
	idleMax   = 30 * time.Second
)

// phases runs every measurement; failures are recorded in the figures.
func (b *bench) phases(ctx context.Context, o Options) {
	bin, buildErr := b.buildWrit(ctx, o.WritBin)
	if b.selected("limits") {
		if err := b.measureLimits(ctx); err != nil {
			b.fail(err, "limit.", "ca.")
		}
		if err := b.measureJWTValidation(ctx); err != nil {
			b.fail(err, "jwt.validate.")
		}
	}
	if ctx.Err() != nil {
		return
	}
	if b.selected("oauth") {
		if err := b.measureOAuthValidation(ctx); err != nil {
			b.fail(err, "oauth.validate.")
		}
	}
	if ctx.Err() != nil {
		return
	}
	var wlErr error
	if b.selected("calls") {
		wlErr = b.measureCalls(ctx, bin, buildErr)
	}
	if ctx.Err() != nil {
		return
	}
	if buildErr != nil {
		b.fail(buildErr, append([]string{"server.jwt_sign.", "propagation.", "memory.", figRegAdmin, figRegCLI, figAgentSyncRate, "backlog.", "template.", "lifecycle.", "jwks.", "oauth.revocation.", "oauth.issue."}, pgPrefixes...)...)
		return
	}
	if b.selected(phaseJWTSign) {
		if err := b.measureServerJWTSigning(ctx, bin); err != nil {
			b.fail(err, "server.jwt_sign.")
		}
	}
	if ctx.Err() != nil {
		return
	}
	if b.selected("scale") {
		b.measureWritScale(ctx, bin, wlErr)
	}
	if ctx.Err() != nil {
		return
	}
	if b.selected("cli") {
		if err := b.measureCLIImport(ctx, bin); err != nil {
			b.fail(err, figRegCLI)
		}
	}
	if ctx.Err() != nil {
		return
	}
	if b.selected("backlog") {
		if err := b.measureBacklog(ctx, bin); err != nil {
			b.fail(err, "backlog.")
		}
	}
	if ctx.Err() != nil {
		return
	}
	if b.selected("templates") {
		if err := b.measureTemplates(ctx, bin); err != nil {
			b.fail(err, "template.")
		}
	}
	if b.selected("jwks") {
		if err := b.measureJWKS(ctx, bin); err != nil {
			b.fail(err, "jwks.")
		}
	}
	if b.selected("lifecycle") {
		b.measureLifecycle(ctx, bin)
	}
	if b.selected("oauth") {
		b.measureOAuthServer(ctx, bin)
	}
	if b.selected("postgres") {
		b.measurePostgres(ctx, bin)
	}
	// The full run measures this case within calls and scale; x509-many
	// measures it alone, at three entry counts.
	if len(b.only) > 0 && b.selected(onlyX509Many) {
		b.measureOnlyX509Many(ctx, bin)
	}
}

// phaseNames are the phases --only selects from, in run order.
var phaseNames = []string{"limits", "calls", phaseJWTSign, "scale", "cli", "backlog", "templates", "jwks", "lifecycle", "oauth", "postgres", "x509-many"}

// selected tells whether a phase runs: every phase unless --only names
// some.
func (b *bench) selected(phase string) bool {
	return len(b.only) == 0 || slices.Contains(b.only, phase)
}

// allSigned are the agent flags that keep every SVID of the entries the
// memory and propagation figures count signed.
func allSigned(cfg Config) []string {
	return []string{"--svid-cache-size", strconv.Itoa(2*cfg.EntriesLarge + 1000)}
}

// writEnv is a running server and agent.
type writEnv struct {
	server, agent *writProc
	adminSock     string
	wlSock        string
	uid           int
	conn          *grpc.ClientConn
	entries       adminv1.EntryServiceClient
	registered    int           // bulk entries
	createTime    time.Duration // in BatchCreateEntry calls for bulk entries
}

// measureWritScale measures memory idle and with many entries, the
// registration rate, propagation and open streams on a new pair of server
// and agent: the Workload API calls measured before leave state in their
// agent (a JWT-SVID for each of thousands of audiences) that must not
// count here.
func (b *bench) measureWritScale(ctx context.Context, bin string, wlErr error) {
	b.prog.phase("Writ at scale: a new writ server run and writ agent run")
	scalePrefixes := []string{"propagation.", "memory.", figRegAdmin, figAgentSyncRate}
	w, err := b.startPair(ctx, bin, "B", allSigned(b.cfg)...)
	if err != nil {
		b.fail(err, scalePrefixes...)
		return
	}
	defer w.close()

	if err := b.memCheckpoint(ctx, w, memIdle); err != nil {
		b.fail(err, "memory.server.rss."+memIdle, "memory.server.rss_anon."+memIdle, "memory.agent.rss."+memIdle, "memory.agent.rss_anon."+memIdle)
	}
	var watch *watcher
	if wlErr == nil {
		watch, wlErr = b.openWorkloadAPI(ctx, w)
	}
	if wlErr != nil {
		b.fail(wlErr, "propagation.", figAgentRSSStreams, figAgentPerStream)
	} else {
		defer watch.close()
		if err := b.measurePropagation(ctx, w, watch, propE0); err != nil {
			b.fail(err, "propagation."+propE0+".")
		}
	}

	b.prog.phase(fmt.Sprintf("registration and memory: %s then %s entries for the agent", count(b.cfg.EntriesSmall), count(b.cfg.EntriesLarge)))
	for _, step := range []struct {
		total int
		key   string
	}{{b.cfg.EntriesSmall, memE1k}, {b.cfg.EntriesLarge, memE10k}} {
		if err := b.fill(ctx, w, step.total, step.key); err != nil {
			b.fail(err, "memory.", figRegAdmin, figAgentSyncRate, "propagation."+propE10k+".", figAgentRSSStreams, figAgentPerStream)
			return
		}
	}
	rate := float64(w.registered) / w.createTime.Seconds()
	b.set(figRegAdmin, rate, w.registered, map[string]int{"entries": w.registered, "batch": b.cfg.Batch})
	b.prog.printf("admin API registration: %s entries/s", num(rate))

	if wlErr != nil {
		return
	}
	if err := b.measurePropagation(ctx, w, watch, propE10k); err != nil {
		b.fail(err, "propagation."+propE10k+".")
	}
	if err := b.measureStreams(ctx, w); err != nil {
		b.fail(err, figAgentRSSStreams, figAgentPerStream)
	}
	b.measureMany(ctx, w, watch)
}

// measureMany measures FetchX509SVID for a caller entitled to 101 SVIDs
// on an agent that holds w.registered entries for other workloads, 1 and
// 16 callers, alternately with a stub serving 101 SVIDs: the cost of a
// call must not grow with the entries the agent holds.
func (b *bench) measureMany(ctx context.Context, w *writEnv, watch *watcher) {
	names := []string{"stub." + scX509S101E10k + ".", "stub." + scX509S101E10kC16 + ".", "writ." + scX509S101E10k + ".", "writ." + scX509S101E10kC16 + "."}
	b.prog.phase(fmt.Sprintf("FetchX509SVID of 101 SVIDs with %s other entries on the agent, and the stub", count(w.registered)))
	stubSock := filepath.Join(b.tmp, "stub101b.sock")
	s, err := b.startStub(ctx, stubSock, 101)
	if err != nil {
		b.fail(err, names...)
		return
	}
	defer s.stop()
	if err := entitle100(ctx, b.cfg, w, watch); err != nil {
		b.fail(err, names...)
		return
	}
	for _, sc := range []wlScenario{
		{name: scX509S101E10k, callers: 1, newCall: x509All(101)},
		{name: scX509S101E10kC16, callers: 16, newCall: x509All(101), minSlice: 2 * time.Second},
	} {
		b.measureWorkload(ctx, wlTarget{prefix: "stub", socket: stubSock, sc: sc}, wlTarget{prefix: "writ", socket: w.wlSock, sc: sc})
	}
}

// startPair starts a server, gets a join token, and starts an agent
// attested with it, all in the subdirectory sub of the temporary
// directory.
func (b *bench) startPair(ctx context.Context, bin, sub string, agentArgs ...string) (*writEnv, error) {
	dir := filepath.Join(b.tmp, sub)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, err
	}
	w := &writEnv{wlSock: filepath.Join(dir, "wl.sock"), uid: os.Getuid()}
	server, addr, err := b.startServer(ctx, bin, sub+"-server", filepath.Join(dir, "s"))
	if err != nil {
		return nil, err
	}
	w.server, w.adminSock = server, filepath.Join(dir, "s", "admin.sock")
	token, err := b.runWrit(ctx, bin, "token", "generate", "--spiffe-id", agentID, "--admin-socket", w.adminSock)
	if err != nil {
		return nil, err
	}
	bundle, err := b.runWrit(ctx, bin, "bundle", "show", "--admin-socket", w.adminSock)
	if err != nil {
		return nil, err
	}
	bundlePath := filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(bundlePath, []byte(bundle), 0o600); err != nil {
		return nil, err
	}
	agentDir := filepath.Join(dir, "a")
	args := []string{"agent", "run", "--server-address", addr, "--trust-domain", benchTD.Name(),
		"--data-dir", agentDir, "--socket-path", w.wlSock, "--trust-bundle", bundlePath,
		// The stream figure opens Streams/streamsPerConn connections
		// from this one uid, more than the default per-uid share (128):
		// allow it all 1,024.
		"--workload-max-connections-per-uid", "1024",
		"--log-format", "json", "--log-level", "debug"}
	w.agent, err = b.startWrit(bin, sub+"-agent", []string{"WRIT_JOIN_TOKEN=" + strings.TrimSpace(token)}, append(args, agentArgs...)...)
	if err != nil {
		return nil, err
	}
	if err := b.waitHealthy(ctx, w.agent, "agent", "healthcheck", "--data-dir", agentDir, "--timeout", "1s"); err != nil {
		return nil, err
	}
	w.conn, err = grpc.NewClient("unix:"+w.adminSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	w.entries = adminv1.NewEntryServiceClient(w.conn)
	b.prog.printf("server pid %d (node API %s), agent pid %d", w.server.pid(), addr, w.agent.pid())
	return w, nil
}

func (w *writEnv) close() {
	if w.conn != nil {
		w.conn.Close()
	}
	w.agent.stop()
	w.server.stop()
}

// startServer starts `writ server run` on dataDir and returns it with the
// address of its node API.
func (b *bench) startServer(ctx context.Context, bin, name, dataDir string, extra ...string) (*writProc, string, error) {
	p, err := b.startWrit(bin, name, nil, append([]string{"server", "run", "--trust-domain", benchTD.Name(), "--data-dir", dataDir,
		"--bind-address", "127.0.0.1:0", "--log-format", "json", "--log-level", "info"}, extra...)...)
	if err != nil {
		return nil, "", err
	}
	if err := b.waitHealthy(ctx, p, "server", "healthcheck", "--admin-socket", filepath.Join(dataDir, "admin.sock"), "--timeout", "1s"); err != nil {
		return nil, "", err
	}
	var addr string
	err = waitFor(ctx, 5*time.Second, "the server's bind address in its log", func() (bool, error) {
		addr = p.logs.bindAddress()
		return addr != "", nil
	}, p)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %w", errNoBindAddress, err)
	}
	return p, addr, nil
}

// waitHealthy runs a healthcheck command until it succeeds.
func (b *bench) waitHealthy(ctx context.Context, p *writProc, args ...string) error {
	var last error
	err := waitFor(ctx, b.cfg.Timeout, p.name+" healthy", func() (bool, error) {
		_, last = b.runWrit(ctx, p.cmd.Path, args...)
		return last == nil, nil
	}, p)
	if err != nil && last != nil {
		return fmt.Errorf("%w (last: %v)", err, last)
	}
	return err
}

// workloadEntry is an entry of the benchmark process (its uid) under the
// agent.
func (w *writEnv) workloadEntry(path string) *adminv1.Entry {
	return &adminv1.Entry{
		SpiffeId:  "spiffe://" + benchTD.Name() + path,
		ParentId:  agentID,
		Selectors: []string{fmt.Sprintf("unix:uid:%d", w.uid)},
	}
}

// create creates entries in batches and returns their IDs and the time
// spent in BatchCreateEntry.
func (w *writEnv) create(ctx context.Context, es []*adminv1.Entry, batch int) ([]string, time.Duration, error) {
	var ids []string
	var spent time.Duration
	for start := 0; start < len(es); start += batch {
		end := min(start+batch, len(es))
		t0 := time.Now()
		resp, err := w.entries.BatchCreateEntry(ctx, &adminv1.BatchCreateEntryRequest{Entries: es[start:end]})
		spent += time.Since(t0)
		if err != nil {
			return nil, 0, fmt.Errorf("BatchCreateEntry: %w", err)
		}
		if len(resp.GetResults()) != end-start {
			return nil, 0, fmt.Errorf("BatchCreateEntry: %d results for %d entries", len(resp.GetResults()), end-start)
		}
		for _, r := range resp.GetResults() {
			if c := codes.Code(r.GetStatus().GetCode()); c != codes.OK {
				return nil, 0, fmt.Errorf("BatchCreateEntry: %s: %s", c, r.GetStatus().GetMessage())
			}
			ids = append(ids, r.GetEntry().GetId())
		}
	}
	return ids, spent, nil
}

func (w *writEnv) delete(ctx context.Context, ids ...string) error {
	for _, id := range ids {
		if _, err := w.entries.DeleteEntry(ctx, &adminv1.DeleteEntryRequest{Id: id}); err != nil {
			return fmt.Errorf("DeleteEntry: %w", err)
		}
	}
	return nil
}

// memCheckpoint records the memory of the server and agent at rest.
func (b *bench) memCheckpoint(ctx context.Context, w *writEnv, key string) error {
	idle, err := waitIdle(ctx, idleQuiet, idleMax, w.server.pid(), w.agent.pid())
	if err != nil {
		return err
	}
	if !idle {
		b.prog.printf("note: server and agent still busy after %s; memory read anyway", idleMax)
	}
	sm, err := readMem(w.server.pid())
	if err != nil {
		return err
	}
	am, err := readMem(w.agent.pid())
	if err != nil {
		return err
	}
	params := map[string]int{"entries": w.registered}
	b.set("memory.server.rss."+key, sm.RSS, 0, params)
	b.set("memory.server.rss_anon."+key, sm.Anon, 0, params)
	b.set("memory.agent.rss."+key, am.RSS, 0, params)
	b.set("memory.agent.rss_anon."+key, am.Anon, 0, params)
	b.memory = append(b.memory, memPoint{Entries: w.registered, Server: sm, Agent: am})
	b.prog.printf("memory with %s entries: server RSS %.1f MiB (anon %.1f), agent RSS %.1f MiB (anon %.1f)", count(w.registered), sm.RSS, sm.Anon, am.RSS, am.Anon)
	return nil
}

// fill registers bulk entries for the agent up to total, waits until the
// agent holds all their SVIDs, and records the memory under key.
func (b *bench) fill(ctx context.Context, w *writEnv, total int, key string) error {
	from := w.registered
	var es []*adminv1.Entry
	for i := from; i < total; i++ {
		es = append(es, &adminv1.Entry{
			SpiffeId:  fmt.Sprintf("spiffe://%s/bulk/w%d", benchTD.Name(), i),
			ParentId:  agentID,
			Selectors: []string{fmt.Sprintf("unix:uid:%d", bulkUIDBase+i)},
		})
	}
	mark, _ := w.agent.logs.signedCount()
	start := time.Now()
	_, spent, err := w.create(ctx, es, b.cfg.Batch)
	if err != nil {
		return err
	}
	w.registered = total
	w.createTime += spent
	b.prog.printf("registered %s entries in %s (%s entries/s)", count(len(es)), spent.Round(time.Millisecond), num(float64(len(es))/spent.Seconds()))
	err = waitFor(ctx, b.cfg.Timeout, fmt.Sprintf("the agent to sign %d X.509-SVIDs", len(es)), func() (bool, error) {
		n, _ := w.agent.logs.signedCount()
		return n-mark >= len(es), nil
	}, w.server, w.agent)
	if err != nil {
		if _, records := w.agent.logs.signedCount(); records == 0 {
			err = fmt.Errorf("%w (the agent's log has no \"X.509-SVIDs signed\" records to count)", err)
		}
		return err
	}
	took := time.Since(start)
	b.prog.printf("the agent holds their SVIDs %s after registration began", took.Round(time.Millisecond))
	if key == memE10k {
		b.set(figAgentSyncRate, float64(len(es))/took.Seconds(), len(es), map[string]int{"entries": len(es)})
	}
	return b.memCheckpoint(ctx, w, key)
}

// measureCLIImport imports entries with `writ entry create --file` into a
// fresh server.
func (b *bench) measureCLIImport(ctx context.Context, bin string) error {
	n := b.cfg.CLIEntries
	b.prog.phase(fmt.Sprintf("registration: writ entry create --file with %s entries, fresh server", count(n)))
	dataDir := filepath.Join(b.tmp, "c")
	p, _, err := b.startServer(ctx, bin, "C-server", dataDir)
	if err != nil {
		return err
	}
	defer p.stop()
	type fileEntry struct {
		SPIFFEID  string   `json:"spiffe_id"`
		ParentID  string   `json:"parent_id"`
		Selectors []string `json:"selectors"`
	}
	es := make([]fileEntry, n)
	for i := range es {
		es[i] = fileEntry{
			SPIFFEID:  fmt.Sprintf("spiffe://%s/import/w%d", benchTD.Name(), i),
			ParentID:  fmt.Sprintf("spiffe://%s/writ/agent/n%d", benchTD.Name(), i%100),
			Selectors: []string{fmt.Sprintf("unix:uid:%d", bulkUIDBase+i)},
		}
	}
	data, err := json.Marshal(es)
	if err != nil {
		return err
	}
	file := filepath.Join(b.tmp, "entries.json")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		return err
	}
	start := time.Now()
	out, err := b.runWrit(ctx, bin, "entry", "create", "--file", file, "--admin-socket", filepath.Join(dataDir, "admin.sock"))
	took := time.Since(start)
	if err != nil {
		return err
	}
	if want := fmt.Sprintf("created %d of %d", n, n); !strings.Contains(out, want) {
		return fmt.Errorf("writ entry create --file: output %q lacks %q", firstLine(out), want)
	}
	rate := float64(n) / took.Seconds()
	b.set(figRegCLI, rate, n, map[string]int{"entries": n})
	b.prog.printf("writ entry create --file: %s entries in %s (%s entries/s)", count(n), took.Round(time.Millisecond), num(rate))
	return nil
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
