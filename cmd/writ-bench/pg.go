package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/internal/pgtest"
)

// pgCounts are the sizes of the PostgreSQL phases.
type pgCounts struct {
	// Entries is the number of entries of the agent connected to server
	// B before the cross-server propagation samples.
	Entries int
	// CLIEntries is the number of entries `writ entry create --file`
	// imports through server A.
	CLIEntries int
	// Agents is the number of simulated agents of the fan-out, split
	// evenly over the two servers, each with AgentEntries entries.
	Agents, AgentEntries int
	// FanSamples is the number of single changes timed in the fan-out.
	FanSamples int
}

func pgCountsFor(cfg Config) pgCounts {
	n := pgCounts{Entries: 10000, CLIEntries: 10000, Agents: 10000, AgentEntries: 10, FanSamples: 200}
	if cfg.Smoke {
		n = pgCounts{Entries: 1000, CLIEntries: 2000, Agents: 200, AgentEntries: 10, FanSamples: 10}
	}
	if cfg.FanAgents > 0 {
		n.Agents = cfg.FanAgents
	}
	return n
}

// Figures of the PostgreSQL phases.
const (
	propPG            = "pg_cross"
	figPGRegCLI       = "registration.cli_file.pg"
	figFanP50         = "fanout.pg.change.p50"
	figFanP99         = "fanout.pg.change.p99"
	figFanRSS         = "fanout.pg.server_rss"
	figFanRSSPerAgent = "fanout.pg.server_rss_per_agent"
	figFanConnect     = "fanout.pg.connect_rate"
	figFanCeiling     = "fanout.pg.agent_ceiling"
)

// pgPrefixes name every figure of the PostgreSQL phases, for bench.fail.
var pgPrefixes = []string{"propagation." + propPG + ".", figPGRegCLI, "fanout.pg."}

// ceilingHeadroom is the share of memory and of signing capacity the
// agent ceiling lets agents use: the rest is for bursts (a reconnect
// storm after another server fails) and for the server's other work.
const ceilingHeadroom = 0.5

// pgCatalogue returns the figures of the PostgreSQL phases.
func pgCatalogue(cfg Config) []*Figure {
	n := pgCountsFor(cfg)
	var fs []*Figure
	add := func(name, unit, desc string, tgt *Target) {
		fs = append(fs, &Figure{Name: name, Unit: unit, Description: desc, Target: tgt})
	}
	what := fmt.Sprintf("two servers on one PostgreSQL: propagation from server A's BatchCreateEntry returning to a watching workload of an agent connected to server B receiving the new SVID, with %s other entries registered for the agent", count(n.Entries))
	add("propagation."+propPG+".p50", unitMS, what+": median", nil)
	add("propagation."+propPG+".p99", unitMS, what+": 99th percentile", below(50, "<= 50 ms at p99"))
	add("propagation."+propPG+".max", unitMS, what+": maximum", nil)
	add("propagation."+propPG+".from_send.p50", unitMS, what+", timed from the call being sent: median", nil)
	add("propagation."+propPG+".from_send.p99", unitMS, what+", timed from the call being sent: 99th percentile", nil)
	add(figPGRegCLI, unitEntriesPerSec, fmt.Sprintf("entries created per second by `writ entry create --file` (%s entries) through server A of two on one PostgreSQL (fsync on)", count(n.CLIEntries)), atLeast(10000, ">= 10,000 entries/s"))
	fan := fmt.Sprintf("%s simulated agents (in process: real TLS, attestation and Sync streams) split over two servers on one PostgreSQL, %d entries each (%s in all)", count(n.Agents), n.AgentEntries, count(n.Agents*n.AgentEntries))
	add(figFanP50, unitMS, fan+": time from server A or B's BatchCreateEntry being sent to the one agent concerned receiving the change on its stream: median", nil)
	add(figFanP99, unitMS, fan+": the same, 99th percentile", nil)
	add(figFanRSS, unitMiB, fan+": RSS (VmRSS) of one server with its half of the agents connected (mean of the two)", nil)
	add(figFanRSSPerAgent, unitKiB, fan+": server RSS increase per connected agent (from all entries registered to all agents connected; mean of the two servers)", below(32, "<= 32 KiB"))
	add(figFanConnect, "agents/s", fan+": agents attested and synced (first full message) per second per server, 32 at a time over both", nil)
	add(figFanCeiling, "agents", fmt.Sprintf("derived, not measured: agents one server of this machine carries = min(memory: %.0f %% of MemTotal / 2 servers / %s; renewals: %.0f %% of 1800 s / (1 / %s + %d / %s), i.e. each agent's own SVID renewed at the attestation rate (both write to the database) and its %d workload SVIDs at the measured signing rate, every 30 min at 1 h TTLs)",
		100*ceilingHeadroom, figFanRSSPerAgent, 100*ceilingHeadroom, figFanConnect, n.AgentEntries, figAgentSyncRate, n.AgentEntries), nil)
	return fs
}

// measurePostgres runs the PostgreSQL phases on a throwaway cluster.
func (b *bench) measurePostgres(ctx context.Context, bin string) {
	n := pgCountsFor(b.cfg)
	b.prog.phase("PostgreSQL: a throwaway cluster (fsync on) shared by two writ servers")
	c, err := pgtest.StartCluster(true)
	if err != nil {
		b.fail(fmt.Errorf("start PostgreSQL: %w", err), pgPrefixes...)
		return
	}
	defer func() {
		if err := c.Destroy(); err != nil {
			b.prog.printf("stop PostgreSQL: %v", err)
		}
	}()
	if err := b.measurePGPropagation(ctx, bin, c, n); err != nil {
		b.fail(err, "propagation."+propPG+".", figPGRegCLI)
	}
	if ctx.Err() != nil {
		return
	}
	if err := b.measurePGFanout(ctx, bin, c, n); err != nil {
		b.fail(err, "fanout.pg.")
	}
}

// pgPair is two servers on one database.
type pgPair struct {
	servers [2]*writProc
	addrs   [2]string
	sockets [2]string
	bundle  string // PEM file
}

func (p *pgPair) stop() {
	for _, s := range p.servers {
		if s != nil {
			s.stop()
		}
	}
}

// newDatabase creates a database in c and returns its postgres:// URL.
func newDatabase(ctx context.Context, c *pgtest.Cluster, name string) (string, error) {
	if err := c.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	cfg, err := pgx.ParseConfig(c.SuperuserDSN())
	if err != nil {
		return "", err
	}
	q := url.Values{}
	q.Set("host", cfg.Host)
	q.Set("port", strconv.Itoa(int(cfg.Port)))
	q.Set("sslmode", "disable")
	u := url.URL{Scheme: "postgres", User: url.User(cfg.User), Path: "/" + name, RawQuery: q.Encode()}
	return u.String(), nil
}

// startPGPair starts servers A and B at once on a new database and waits
// until both serve and publish both CAs.
func (b *bench) startPGPair(ctx context.Context, bin string, c *pgtest.Cluster, sub string) (*pgPair, error) {
	dsURL, err := newDatabase(ctx, c, "writ_bench_"+sub)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(b.tmp, sub)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, err
	}
	p := &pgPair{}
	for i, name := range []string{"A", "B"} {
		dataDir := filepath.Join(dir, name)
		p.sockets[i] = filepath.Join(dataDir, "admin.sock")
		p.servers[i], err = b.startWrit(bin, sub+"-server-"+name, nil, "server", "run", "--trust-domain", benchTD.Name(),
			"--data-dir", dataDir, "--bind-address", "127.0.0.1:0", "--log-format", "json", "--log-level", "info", "--datastore", dsURL)
		if err != nil {
			p.stop()
			return nil, err
		}
	}
	for i, s := range p.servers {
		if err := b.waitHealthy(ctx, s, "server", "healthcheck", "--admin-socket", p.sockets[i], "--timeout", "1s"); err != nil {
			p.stop()
			return nil, err
		}
		err := waitFor(ctx, 5*time.Second, "the server's bind address in its log", func() (bool, error) {
			p.addrs[i] = s.logs.bindAddress()
			return p.addrs[i] != "", nil
		}, s)
		if err != nil {
			p.stop()
			return nil, fmt.Errorf("%w: %w", errNoBindAddress, err)
		}
	}
	var bundle string
	err = waitFor(ctx, b.cfg.Timeout, "both servers' CAs in the bundle", func() (bool, error) {
		var err error
		bundle, err = b.runWrit(ctx, bin, "bundle", "show", "--admin-socket", p.sockets[1])
		return err == nil && strings.Count(bundle, "BEGIN CERTIFICATE") == 2, err
	}, p.servers[0], p.servers[1])
	if err != nil {
		p.stop()
		return nil, err
	}
	p.bundle = filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(p.bundle, []byte(bundle), 0o600); err != nil {
		p.stop()
		return nil, err
	}
	b.prog.printf("servers A (pid %d, %s) and B (pid %d, %s) on %s", p.servers[0].pid(), p.addrs[0], p.servers[1].pid(), p.addrs[1], "PostgreSQL")
	return p, nil
}

// measurePGPropagation starts servers A and B, an agent of B holding
// n.Entries entries registered through A, and times new entries created
// through A reaching a watcher of that agent; then it imports entries
// with `writ entry create --file` through A.
func (b *bench) measurePGPropagation(ctx context.Context, bin string, c *pgtest.Cluster, n pgCounts) error {
	pair, err := b.startPGPair(ctx, bin, c, "pgp")
	if err != nil {
		return err
	}
	defer pair.stop()
	token, err := b.runWrit(ctx, bin, "token", "generate", "--spiffe-id", agentID, "--admin-socket", pair.sockets[0])
	if err != nil {
		return err
	}
	dir := filepath.Join(b.tmp, "pgp")
	w := &writEnv{wlSock: filepath.Join(dir, "wl.sock"), uid: os.Getuid(), server: pair.servers[0], adminSock: pair.sockets[0]}
	agentDir := filepath.Join(dir, "agent")
	w.agent, err = b.startWrit(bin, "pgp-agent", []string{"WRIT_JOIN_TOKEN=" + strings.TrimSpace(token)},
		append([]string{"agent", "run", "--server-address", pair.addrs[1], "--trust-domain", benchTD.Name(),
			"--data-dir", agentDir, "--socket-path", w.wlSock, "--trust-bundle", pair.bundle,
			"--log-format", "json", "--log-level", "debug"}, allSigned(b.cfg)...)...)
	if err != nil {
		return err
	}
	defer w.agent.stop()
	if err := b.waitHealthy(ctx, w.agent, "agent", "healthcheck", "--data-dir", agentDir, "--timeout", "1s"); err != nil {
		return err
	}
	w.conn, err = grpc.NewClient("unix:"+w.adminSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer w.conn.Close()
	w.entries = adminv1.NewEntryServiceClient(w.conn)
	watch, err := b.openCrossWatcher(ctx, w)
	if err != nil {
		return err
	}
	defer watch.close()

	// The agent's entries, through A; it holds their SVIDs, signed by B.
	var es []*adminv1.Entry
	for i := range n.Entries {
		es = append(es, &adminv1.Entry{
			SpiffeId:  fmt.Sprintf("spiffe://%s/bulk/w%d", benchTD.Name(), i),
			ParentId:  agentID,
			Selectors: []string{fmt.Sprintf("unix:uid:%d", bulkUIDBase+i)},
		})
	}
	mark, _ := w.agent.logs.signedCount()
	_, spent, err := w.create(ctx, es, b.cfg.Batch)
	if err != nil {
		return err
	}
	w.registered = len(es)
	b.prog.printf("registered %s entries through A in %s (%s entries/s)", count(len(es)), spent.Round(time.Millisecond), num(float64(len(es))/spent.Seconds()))
	err = waitFor(ctx, b.cfg.Timeout, fmt.Sprintf("the agent of B to sign %d X.509-SVIDs", len(es)), func() (bool, error) {
		got, _ := w.agent.logs.signedCount()
		return got-mark >= len(es), nil
	}, pair.servers[0], pair.servers[1], w.agent)
	if err != nil {
		return err
	}
	if _, err := waitIdle(ctx, idleQuiet, idleMax, pair.servers[0].pid(), pair.servers[1].pid(), w.agent.pid()); err != nil {
		return err
	}
	if err := b.measurePropagation(ctx, w, watch, propPG); err != nil {
		return err
	}
	return b.measurePGImport(ctx, bin, pair, n)
}

// openCrossWatcher creates the benchmark's own entry through server A
// and opens a FetchX509SVID stream on the agent of B once its SVID is
// there: the agent refuses a caller it has no SVID for, and the entry
// reaches it through the other server, so the stream is opened again
// until the agent has it.
func (b *bench) openCrossWatcher(ctx context.Context, w *writEnv) (*watcher, error) {
	base := w.workloadEntry(baseEntryPath)
	if _, _, err := w.create(ctx, []*adminv1.Entry{base}, 1); err != nil {
		return nil, err
	}
	var watch *watcher
	var last error
	err := waitFor(ctx, b.cfg.Timeout, "the benchmark's SVID from the agent of B", func() (bool, error) {
		if !isSocket(w.wlSock) {
			return false, nil
		}
		var err error
		if watch, err = startWatcher(ctx, w.wlSock); err != nil {
			return false, err
		}
		last = watch.wait(ctx, time.Second, func(p map[string]bool) bool { return p[base.SpiffeId] })
		if last == nil {
			return true, nil
		}
		watch.close()
		return false, nil
	}, w.server, w.agent)
	if err != nil {
		return nil, fmt.Errorf("%w (last: %v)", err, last)
	}
	return watch, nil
}

// measurePGImport imports n.CLIEntries entries with `writ entry create
// --file` through server A (B follows them through the change feed).
func (b *bench) measurePGImport(ctx context.Context, bin string, pair *pgPair, n pgCounts) error {
	b.prog.phase(fmt.Sprintf("registration on PostgreSQL: writ entry create --file with %s entries through A", count(n.CLIEntries)))
	type fileEntry struct {
		SPIFFEID  string   `json:"spiffe_id"`
		ParentID  string   `json:"parent_id"`
		Selectors []string `json:"selectors"`
	}
	es := make([]fileEntry, n.CLIEntries)
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
	file := filepath.Join(b.tmp, "pg-entries.json")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		return err
	}
	start := time.Now()
	out, err := b.runWrit(ctx, bin, "entry", "create", "--file", file, "--admin-socket", pair.sockets[0])
	took := time.Since(start)
	if err != nil {
		return err
	}
	if want := fmt.Sprintf("created %d of %d", n.CLIEntries, n.CLIEntries); !strings.Contains(out, want) {
		return fmt.Errorf("writ entry create --file: output %q lacks %q", firstLine(out), want)
	}
	rate := float64(n.CLIEntries) / took.Seconds()
	b.set(figPGRegCLI, rate, n.CLIEntries, map[string]int{"entries": n.CLIEntries})
	b.prog.printf("writ entry create --file on PostgreSQL: %s entries in %s (%s entries/s)", count(n.CLIEntries), took.Round(time.Millisecond), num(rate))
	return nil
}

// memTotalMiB returns the machine's MemTotal.
func memTotalMiB() (float64, error) {
	v, ok := procField("/proc/meminfo", "MemTotal")
	if !ok {
		return 0, fmt.Errorf("/proc/meminfo: no MemTotal")
	}
	kib, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
	if err != nil {
		return 0, fmt.Errorf("/proc/meminfo: MemTotal %q: %w", v, err)
	}
	return kib / 1024, nil
}
