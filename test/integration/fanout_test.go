package integration_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"writ.dev/writ/agent/nodeclient"
	adminv1 "writ.dev/writ/ca/api/admin/v1"
	nodev1 "writ.dev/writ/ca/api/node/v1"
)

// Shape of BenchmarkFanout.
const (
	fanAgents        = 1000
	fanEntries       = 10   // per agent
	fanParallel      = 32   // agents attesting (and opening Sync) at a time
	fanTokenParallel = 16   // join tokens generated at a time
	fanBatch         = 1000 // entries per BatchCreateEntry (the server allows 5,000)
	// fanMinSamples is the fewest changes timed, whatever b.Loop runs.
	fanMinSamples = 50
	// fanWait bounds the wait for one change to reach its agent.
	fanWait = 10 * time.Second
	// fanGrace is how long strays are still watched for after the last
	// sample.
	fanGrace = 250 * time.Millisecond
)

var fanTD = spiffeid.RequireTrustDomainFromString("example.org")

// BenchmarkFanout runs a real server with 1,000 agents of 10 entries each,
// simulated in this process with agent/nodeclient (one Sync stream and
// goroutine per agent), then times single changes: each iteration creates
// one entry for a random agent through the admin API and waits until that
// agent's stream delivers it. It reports the p50 and p99 of that delay
// (and of the admin call alone), the messages any other agent received
// meanwhile (must be zero), the server's memory with everything connected
// and the client side's heap.
//
//	go test -run '^$' -bench Fanout -benchtime 50x ./test/integration/
func BenchmarkFanout(b *testing.B) {
	baseGoroutines := runtime.NumGoroutine()
	dir := shortTempDir(b)
	p := startServer(b, filepath.Join(dir, "data"), "--log-level", "warn")
	pid := p.cmd.Process.Pid
	idleRSS := procStatus(b, pid, "VmRSS")
	// At warn level the server does not log its address: find its
	// listening socket instead.
	addr := fanListenAddr(b, pid)
	bundle, err := x509bundle.Parse(fanTD, []byte(p.admin("bundle", "show")))
	if err != nil {
		b.Fatalf("parse bundle: %v", err)
	}
	authorities := bundle.X509Authorities()

	f := newFanout(b, p.socket)
	b.Cleanup(f.close)

	start := time.Now()
	tokens := f.generateTokens(b)
	tokenTime := time.Since(start)
	start = time.Now()
	f.registerEntries(b)
	entryTime := time.Since(start)
	entriesRSS := procStatus(b, pid, "VmRSS")
	entriesAnon := procStatus(b, pid, "RssAnon")
	start = time.Now()
	f.connectAgents(b, addr, authorities, tokens)
	connectTime := time.Since(start)
	b.Logf("setup: %d join tokens in %s, %d entries in %s, %d agents attested and synced in %s",
		fanAgents, tokenTime.Round(time.Millisecond), fanAgents*fanEntries, entryTime.Round(time.Millisecond),
		fanAgents, connectTime.Round(time.Millisecond))

	// Memory with every agent connected and its full set sent.
	serverRSS := procStatus(b, pid, "VmRSS")
	serverAnon := procStatus(b, pid, "RssAnon")
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	// Nothing changes until the samples: no agent should hear more.
	f.watchStrays(b, fanGrace)
	if n := f.strays.Load(); n != 0 {
		b.Fatalf("agents received %d messages after their first one before any change", n)
	}

	var (
		rng            = mrand.New(mrand.NewPCG(1, 2))
		latency, rpcTm []time.Duration
	)
	sample := func() {
		lat, rpc := f.sample(b, rng.IntN(fanAgents), len(latency))
		latency = append(latency, lat)
		rpcTm = append(rpcTm, rpc)
	}
	for b.Loop() {
		sample()
	}
	for len(latency) < fanMinSamples {
		sample()
	}
	f.watchStrays(b, fanGrace)

	b.ReportMetric(fanMs(latency, 0.50), "p50-ms")
	b.ReportMetric(fanMs(latency, 0.99), "p99-ms")
	b.ReportMetric(fanMs(rpcTm, 0.50), "rpc-p50-ms")
	b.ReportMetric(float64(f.strays.Load()), "stray-msgs")
	b.ReportMetric(float64(fanAgents)/connectTime.Seconds(), "connect-agents/s")
	b.ReportMetric(idleRSS/1024, "idle-RSS-MiB")
	b.ReportMetric(entriesRSS/1024, "10k-RSS-MiB")
	b.ReportMetric(entriesAnon/1024, "10k-anon-MiB")
	b.ReportMetric(serverRSS/1024, "server-RSS-MiB")
	b.ReportMetric(serverAnon/1024, "server-anon-MiB")
	b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "client-heap-MiB")
	b.Logf("%d samples: min %s, p50 %s, p99 %s, max %s", len(latency),
		slices.Min(latency), fanPct(latency, 0.50), fanPct(latency, 0.99), slices.Max(latency))
	if n := f.strays.Load(); n != 0 {
		b.Errorf("%d messages reached agents other than the one whose entry changed", n)
	}

	f.close()
	p.stop()
	fanCheckGoroutines(b, baseGoroutines)
}

// fanout is the admin client and the simulated agents of BenchmarkFanout.
type fanout struct {
	adminConn *grpc.ClientConn
	tokens    adminv1.JoinTokenServiceClient
	entries   adminv1.EntryServiceClient

	ctx    context.Context // ends the Sync streams
	cancel context.CancelFunc
	// events carries what the agents' streams deliver after their
	// first message.
	events chan fanEvent
	// strays counts messages to agents that should have received none.
	strays atomic.Int64
	wg     sync.WaitGroup // the agents' receive loops

	mu      sync.Mutex // guards clients
	clients []*nodeclient.Client
	once    sync.Once
}

// fanEvent is one message, or the end, of an agent's Sync stream.
type fanEvent struct {
	agent int
	at    time.Time
	msg   *nodev1.SyncResponse
	err   error
}

func newFanout(tb testing.TB, socket string) *fanout {
	tb.Helper()
	conn, err := grpc.NewClient("passthrough:///localhost",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)),
	)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &fanout{
		adminConn: conn,
		tokens:    adminv1.NewJoinTokenServiceClient(conn),
		entries:   adminv1.NewEntryServiceClient(conn),
		ctx:       ctx,
		cancel:    cancel,
		events:    make(chan fanEvent, fanAgents),
	}
}

// close ends the streams, waits for the receive loops and closes every
// connection. It is idempotent.
func (f *fanout) close() {
	f.once.Do(func() {
		f.cancel()
		f.wg.Wait()
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, c := range f.clients {
			c.Close()
		}
		f.clients = nil
		f.adminConn.Close()
	})
}

func fanAgentID(i int) string { return fmt.Sprintf("spiffe://example.org/writ/agent/fan-%d", i) }

func fanEntryID(agent, j int) string { return fmt.Sprintf("%s/w%d", fanAgentID(agent), j) }

func fanSelector(agent int) string { return fmt.Sprintf("unix:uid:%d", agent) }

// generateTokens returns a join token for each agent, fanTokenParallel calls at a
// time.
func (f *fanout) generateTokens(tb testing.TB) []string {
	tb.Helper()
	tokens := make([]string, fanAgents)
	errs := make([]error, fanAgents)
	fanDo(fanAgents, fanTokenParallel, func(i int) {
		ctx, cancel := context.WithTimeout(f.ctx, 30*time.Second)
		defer cancel()
		resp, err := f.tokens.GenerateJoinToken(ctx, &adminv1.GenerateJoinTokenRequest{SpiffeId: fanAgentID(i)})
		if err != nil {
			errs[i] = fmt.Errorf("token for %s: %w", fanAgentID(i), err)
			return
		}
		tokens[i] = resp.GetToken()
	})
	if err := fanFirstError(errs); err != nil {
		tb.Fatal(err)
	}
	return tokens
}

// registerEntries creates fanEntries entries under each agent.
func (f *fanout) registerEntries(tb testing.TB) {
	tb.Helper()
	all := make([]*adminv1.Entry, 0, fanAgents*fanEntries)
	for i := range fanAgents {
		for j := range fanEntries {
			all = append(all, &adminv1.Entry{SpiffeId: fanEntryID(i, j), ParentId: fanAgentID(i), Selectors: []string{fanSelector(i)}})
		}
	}
	for batch := range slices.Chunk(all, fanBatch) {
		f.createEntries(tb, batch)
	}
}

// createEntries creates entries in one call and returns their IDs.
func (f *fanout) createEntries(tb testing.TB, entries []*adminv1.Entry) []string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(f.ctx, 30*time.Second)
	defer cancel()
	resp, err := f.entries.BatchCreateEntry(ctx, &adminv1.BatchCreateEntryRequest{Entries: entries})
	if err != nil {
		tb.Fatalf("create %d entries: %v", len(entries), err)
	}
	if len(resp.GetResults()) != len(entries) {
		tb.Fatalf("create %d entries: %d results", len(entries), len(resp.GetResults()))
	}
	ids := make([]string, len(entries))
	for i, r := range resp.GetResults() {
		if c := codes.Code(r.GetStatus().GetCode()); c != codes.OK {
			tb.Fatalf("create entry %s: %s: %s", entries[i].GetSpiffeId(), c, r.GetStatus().GetMessage())
		}
		ids[i] = r.GetEntry().GetId()
	}
	return ids
}

// connectAgents attests every agent with its token, opens its Sync stream,
// checks the first (full) message and starts its receive loop; fanParallel
// agents at a time.
func (f *fanout) connectAgents(tb testing.TB, addr string, authorities []*x509.Certificate, tokens []string) {
	tb.Helper()
	errs := make([]error, fanAgents)
	fanDo(fanAgents, fanParallel, func(i int) {
		errs[i] = f.connect(i, addr, authorities, tokens[i])
	})
	if err := fanFirstError(errs); err != nil {
		tb.Fatal(err)
	}
}

func (f *fanout) connect(i int, addr string, authorities []*x509.Certificate, token string) error {
	cfg := nodeclient.Config{
		Address:     addr,
		TrustDomain: fanTD,
		Authorities: func() []*x509.Certificate { return authorities },
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return err
	}
	ac, err := nodeclient.New(cfg)
	if err != nil {
		return err
	}
	res, err := ac.Attest(f.ctx, token, csr)
	ac.Close()
	if err != nil {
		return fmt.Errorf("agent %d: attest: %w", i, err)
	}

	var cert atomic.Pointer[tls.Certificate]
	cert.Store(&tls.Certificate{Certificate: res.Chain, PrivateKey: key})
	cfg.Certificate = &cert
	c, err := nodeclient.New(cfg)
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.clients = append(f.clients, c)
	f.mu.Unlock()
	stream, err := c.Sync(f.ctx)
	if err != nil {
		return fmt.Errorf("agent %d: sync: %w", i, err)
	}
	first, err := stream.Recv()
	if err != nil {
		return fmt.Errorf("agent %d: first sync message: %w", i, err)
	}
	if err := fanCheckFull(i, first); err != nil {
		return err
	}
	f.wg.Go(func() { f.receive(i, stream) })
	return nil
}

// fanCheckFull checks that msg is agent i's full set: its fanEntries entries.
func fanCheckFull(i int, msg *nodev1.SyncResponse) error {
	if !msg.GetFull() || len(msg.GetBundle()) == 0 {
		return fmt.Errorf("agent %d: first sync message: full %v, %d bytes of bundle", i, msg.GetFull(), len(msg.GetBundle()))
	}
	var got, want []string
	for _, e := range msg.GetEntries() {
		if !slices.Equal(e.GetSelectors(), []string{fanSelector(i)}) {
			return fmt.Errorf("agent %d: entry %s has selectors %v", i, e.GetSpiffeId(), e.GetSelectors())
		}
		got = append(got, e.GetSpiffeId())
	}
	for j := range fanEntries {
		want = append(want, fanEntryID(i, j))
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		return fmt.Errorf("agent %d: first sync message holds %d entries %v, want %v", i, len(got), got, want)
	}
	return nil
}

// receive passes the messages of agent i's stream to f.events until the
// stream ends.
func (f *fanout) receive(i int, stream *nodeclient.SyncStream) {
	for {
		msg, err := stream.Recv()
		ev := fanEvent{agent: i, at: time.Now(), msg: msg, err: err}
		if err != nil && f.ctx.Err() != nil {
			return
		}
		select {
		case f.events <- ev:
		case <-f.ctx.Done():
			return
		}
		if err != nil {
			return
		}
	}
}

// sample creates one entry for agent target and returns how long it took
// to reach the agent's stream and how long the admin call took. Messages
// to other agents meanwhile count as strays.
func (f *fanout) sample(tb testing.TB, target, n int) (latency, rpc time.Duration) {
	tb.Helper()
	spiffeID := fmt.Sprintf("%s/sample-%d", fanAgentID(target), n)
	start := time.Now()
	ids := f.createEntries(tb, []*adminv1.Entry{{SpiffeId: spiffeID, ParentId: fanAgentID(target), Selectors: []string{fanSelector(target)}}})
	rpc = time.Since(start)
	timeout := time.NewTimer(fanWait)
	defer timeout.Stop()
	for {
		select {
		case ev := <-f.events:
			if ev.err != nil {
				tb.Fatalf("agent %d: sync stream ended: %v", ev.agent, ev.err)
			}
			if ev.agent != target {
				f.stray(tb, ev)
				continue
			}
			m := ev.msg
			if m.GetFull() || len(m.GetDeletedEntryIds()) != 0 || len(m.GetEntries()) != 1 ||
				m.GetEntries()[0].GetId() != ids[0] || m.GetEntries()[0].GetSpiffeId() != spiffeID {
				tb.Fatalf("agent %d: got %v, want one new entry %s (%s)", target, m, ids[0], spiffeID)
			}
			return ev.at.Sub(start), rpc
		case <-timeout.C:
			tb.Fatalf("entry %s did not reach agent %d within %s", spiffeID, target, fanWait)
		}
	}
}

// stray counts a message to an agent that should have received none.
func (f *fanout) stray(tb testing.TB, ev fanEvent) {
	if n := f.strays.Add(1); n <= 5 {
		tb.Logf("agent %d received an unexpected message: %v", ev.agent, ev.msg)
	}
}

// watchStrays counts the messages that arrive within d.
func (f *fanout) watchStrays(tb testing.TB, d time.Duration) {
	tb.Helper()
	timeout := time.NewTimer(d)
	defer timeout.Stop()
	for {
		select {
		case ev := <-f.events:
			if ev.err != nil {
				tb.Fatalf("agent %d: sync stream ended: %v", ev.agent, ev.err)
			}
			f.stray(tb, ev)
		case <-timeout.C:
			return
		}
	}
}

// fanListenAddr returns the address of the one TCP socket that process
// pid listens on (the node API; the admin API is a Unix socket), from
// /proc.
func fanListenAddr(tb testing.TB, pid int) string {
	tb.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		tb.Fatal(err)
	}
	inodes := make(map[string]bool)
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if inode, ok := strings.CutPrefix(link, "socket:["); err == nil && ok {
			inodes[strings.TrimSuffix(inode, "]")] = true
		}
	}
	table, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		tb.Fatal(err)
	}
	var addrs []string
	for _, line := range strings.Split(string(table), "\n")[1:] {
		// sl local_address rem_address st … inode (10th field)
		f := strings.Fields(line)
		if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] {
			continue
		}
		hostPort := strings.Split(f[1], ":")
		ip, err1 := strconv.ParseUint(hostPort[0], 16, 32)
		port, err2 := strconv.ParseUint(hostPort[1], 16, 16)
		if err1 != nil || err2 != nil {
			tb.Fatalf("/proc/%d/net/tcp: bad address %q", pid, f[1])
		}
		// The kernel prints the address in host byte order (little
		// endian here).
		a := netip.AddrFrom4([4]byte{byte(ip), byte(ip >> 8), byte(ip >> 16), byte(ip >> 24)})
		addrs = append(addrs, netip.AddrPortFrom(a, uint16(port)).String())
	}
	if len(addrs) != 1 {
		tb.Fatalf("server %d listens on %d TCP addresses %v, want 1", pid, len(addrs), addrs)
	}
	return addrs[0]
}

// fanDo calls fn(0) … fn(n-1), at most limit at a time.
func fanDo(n, limit int, fn func(i int)) {
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			fn(i)
		})
	}
	wg.Wait()
}

func fanFirstError(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// fanPct returns the nearest-rank p-quantile of d.
func fanPct(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[max(0, int(math.Ceil(p*float64(len(s))))-1)]
}

// fanMs returns fanPct in milliseconds.
func fanMs(d []time.Duration, p float64) float64 {
	return float64(fanPct(d, p)) / float64(time.Millisecond)
}

// fanCheckGoroutines fails if more than base goroutines are still running a
// few seconds after everything was closed.
func fanCheckGoroutines(tb testing.TB, base int) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			tb.Errorf("%d goroutines still running, %d before:\n%s", runtime.NumGoroutine(), base, string(buf[:min(len(buf), 16<<10)]))
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
