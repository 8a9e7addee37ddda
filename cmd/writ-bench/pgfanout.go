package main

import (
	"context"
	"crypto/x509"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"writ.dev/writ/agent/nodeclient"
	adminv1 "writ.dev/writ/ca/api/admin/v1"
	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/internal/pgtest"
)

const (
	// fanConnectParallel is the number of simulated agents attesting
	// (and opening Sync) at a time, over both servers.
	fanConnectParallel = 32
	// fanTokenParallel is the number of join tokens generated at a time.
	fanTokenParallel = 16
)

// fanEvent is one message, or the end, of a simulated agent's stream.
type fanEvent struct {
	agent int
	at    time.Time
	msg   *nodev1.SyncResponse
	err   error
}

// pgFanout is the admin clients and the simulated agents of the fan-out.
type pgFanout struct {
	n       pgCounts
	pair    *pgPair
	conns   [2]*grpc.ClientConn
	tokens  [2]adminv1.JoinTokenServiceClient
	entries [2]adminv1.EntryServiceClient
	auth    []*x509.Certificate

	ctx    context.Context // ends the streams
	cancel context.CancelFunc
	events chan fanEvent
	strays atomic.Int64
	// retries counts calls retried after Unavailable.
	retries atomic.Int64
	wg      sync.WaitGroup // receive loops

	mu      sync.Mutex // guards clients
	clients []*nodeclient.Client
}

func fanAgentID(i int) string {
	return fmt.Sprintf("spiffe://%s/writ/agent/fan-%d", benchTD.Name(), i)
}

// fanEntryID is the SPIFFE ID of agent i's entry named name.
func fanEntryID(i int, name string) string {
	return fmt.Sprintf("spiffe://%s/fan/%d/%s", benchTD.Name(), i, name)
}

func fanSelector(i int) string { return fmt.Sprintf("unix:uid:%d", bulkUIDBase+i) }

// measurePGFanout runs n.Agents simulated agents, half on each of two
// servers on one database, and times single changes reaching the one
// agent they concern.
func (b *bench) measurePGFanout(ctx context.Context, bin string, c *pgtest.Cluster, n pgCounts) error {
	b.prog.phase(fmt.Sprintf("fan-out on PostgreSQL: %s simulated agents over two servers, %s entries", count(n.Agents), count(n.Agents*n.AgentEntries)))
	pair, err := b.startPGPair(ctx, bin, c, "pgf")
	if err != nil {
		return err
	}
	defer pair.stop()
	raw, err := os.ReadFile(pair.bundle)
	if err != nil {
		return err
	}
	bundle, err := x509bundle.Parse(benchTD, raw)
	if err != nil {
		return err
	}
	f := &pgFanout{n: n, pair: pair, auth: bundle.X509Authorities(), events: make(chan fanEvent, n.Agents)}
	f.ctx, f.cancel = context.WithCancel(ctx)
	defer f.close()
	for i, sock := range pair.sockets {
		f.conns[i], err = grpc.NewClient("unix:"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
		if err != nil {
			return err
		}
		f.tokens[i] = adminv1.NewJoinTokenServiceClient(f.conns[i])
		f.entries[i] = adminv1.NewEntryServiceClient(f.conns[i])
	}

	start := time.Now()
	tokens, err := f.generateTokens()
	if err != nil {
		return err
	}
	b.prog.printf("%s join tokens in %s", count(n.Agents), time.Since(start).Round(time.Millisecond))
	start = time.Now()
	if err := f.registerEntries(b.cfg.Batch); err != nil {
		return err
	}
	b.prog.printf("%s entries in %s", count(n.Agents*n.AgentEntries), time.Since(start).Round(time.Millisecond))
	pids := []int{pair.servers[0].pid(), pair.servers[1].pid()}
	if _, err := waitIdle(ctx, idleQuiet, idleMax, pids...); err != nil {
		return err
	}
	var before [2]memInfo
	for i, pid := range pids {
		if before[i], err = readMem(pid); err != nil {
			return err
		}
	}
	start = time.Now()
	if err := f.connectAgents(tokens); err != nil {
		return err
	}
	connect := time.Since(start)
	perServerRate := float64(n.Agents) / connect.Seconds() / 2
	b.prog.printf("%s agents attested and synced in %s (%s per second per server; %d calls retried after Unavailable)", count(n.Agents), connect.Round(time.Millisecond), num(perServerRate), f.retries.Load())
	if _, err := waitIdle(ctx, idleQuiet, idleMax, pids...); err != nil {
		return err
	}
	var rss, perAgent float64
	for i, pid := range pids {
		m, err := readMem(pid)
		if err != nil {
			return err
		}
		rss += m.RSS / 2
		perAgent += (m.RSS - before[i].RSS) * 1024 / float64(n.Agents/2) / 2
		b.prog.printf("server %c: RSS %.1f MiB with %s entries, %.1f MiB with %s agents connected", 'A'+i, before[i].RSS, count(n.Agents*n.AgentEntries), m.RSS, count(n.Agents/2))
	}
	if n := f.strays.Load(); n != 0 {
		return fmt.Errorf("agents received %d messages after their first before any change", n)
	}

	rng := mrand.New(mrand.NewPCG(1, 2))
	var lat []time.Duration
	for k := range n.FanSamples {
		d, err := f.sample(rng.IntN(n.Agents), k, b.cfg.Timeout)
		if err != nil {
			return err
		}
		lat = append(lat, d)
	}
	if s := f.strays.Load(); s != 0 {
		return fmt.Errorf("%d messages reached agents other than the one whose entry changed", s)
	}
	sum, err := durationsMS(lat).Summarize()
	if err != nil {
		return err
	}
	params := map[string]int{"agents": n.Agents, "entries": n.Agents * n.AgentEntries, "connect_retries": int(f.retries.Load())}
	b.set(figFanP50, sum.P50, sum.N, params)
	b.set(figFanP99, sum.P99, sum.N, params)
	b.set(figFanRSS, rss, 0, params)
	b.set(figFanRSSPerAgent, perAgent, 0, params)
	b.set(figFanConnect, perServerRate, n.Agents, params)
	b.dist["fanout.pg.change"] = durationsMS(lat)

	total, err := memTotalMiB()
	if err != nil {
		return err
	}
	byMem := ceilingHeadroom * total / 2 * 1024 / perAgent
	signRate, ok := b.res.value(figAgentSyncRate)
	if !ok {
		return fmt.Errorf("%s not measured: the agent ceiling needs it", figAgentSyncRate)
	}
	bySign := ceilingHeadroom * 1800 / (1/perServerRate + float64(n.AgentEntries)/signRate)
	ceiling := min(byMem, bySign)
	b.set(figFanCeiling, ceiling, 0, map[string]int{"by_memory": int(byMem), "by_renewals": int(bySign)})
	b.prog.printf("change to its agent p50 %s ms p99 %s ms; server RSS %.1f MiB, %.1f KiB per agent; ceiling per server %s agents (memory %s, renewals %s)",
		msNum(sum.P50), msNum(sum.P99), rss, perAgent, num(ceiling), num(byMem), num(bySign))
	return nil
}

// close ends the streams and closes every connection.
func (f *pgFanout) close() {
	f.cancel()
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.clients {
		c.Close()
	}
	f.clients = nil
	for _, c := range f.conns {
		if c != nil {
			c.Close()
		}
	}
}

// server is the server agent i connects to (and its token comes from).
func server(i int) int { return i % 2 }

func (f *pgFanout) generateTokens() ([]string, error) {
	tokens := make([]string, f.n.Agents)
	errs := make([]error, f.n.Agents)
	fanDo(f.n.Agents, fanTokenParallel, func(i int) {
		ctx, cancel := context.WithTimeout(f.ctx, time.Minute)
		defer cancel()
		resp, err := f.tokens[server(i)].GenerateJoinToken(ctx, &adminv1.GenerateJoinTokenRequest{SpiffeId: fanAgentID(i)})
		if err != nil {
			errs[i] = fmt.Errorf("join token for agent %d: %w", i, err)
			return
		}
		tokens[i] = resp.GetToken()
	})
	return tokens, firstError(errs)
}

// registerEntries creates n.AgentEntries entries for each agent, the
// batches alternating between the servers.
func (f *pgFanout) registerEntries(batch int) error {
	var all []*adminv1.Entry
	for i := range f.n.Agents {
		for j := range f.n.AgentEntries {
			all = append(all, &adminv1.Entry{SpiffeId: fanEntryID(i, fmt.Sprintf("w%d", j)), ParentId: fanAgentID(i), Selectors: []string{fanSelector(i)}})
		}
	}
	k := 0
	for chunk := range slices.Chunk(all, batch) {
		if _, err := f.create(k%2, chunk); err != nil {
			return err
		}
		k++
	}
	return nil
}

// create creates entries through server s and returns their IDs.
func (f *pgFanout) create(s int, es []*adminv1.Entry) ([]string, error) {
	ctx, cancel := context.WithTimeout(f.ctx, time.Minute)
	defer cancel()
	resp, err := f.entries[s].BatchCreateEntry(ctx, &adminv1.BatchCreateEntryRequest{Entries: es})
	if err != nil {
		return nil, fmt.Errorf("BatchCreateEntry of %d entries: %w", len(es), err)
	}
	if len(resp.GetResults()) != len(es) {
		return nil, fmt.Errorf("BatchCreateEntry: %d results for %d entries", len(resp.GetResults()), len(es))
	}
	ids := make([]string, len(es))
	for i, r := range resp.GetResults() {
		if c := codes.Code(r.GetStatus().GetCode()); c != codes.OK {
			return nil, fmt.Errorf("BatchCreateEntry %s: %s: %s", es[i].GetSpiffeId(), c, r.GetStatus().GetMessage())
		}
		ids[i] = r.GetEntry().GetId()
	}
	return ids, nil
}

func (f *pgFanout) connectAgents(tokens []string) error {
	errs := make([]error, f.n.Agents)
	fanDo(f.n.Agents, fanConnectParallel, func(i int) {
		errs[i] = f.connect(i, tokens[i])
	})
	return firstError(errs)
}

// fanAttempts bounds the attempts of a call that fails with Unavailable
// (a server too busy to finish a TLS handshake in time), as an agent
// retries it.
const fanAttempts = 5

// retry calls fn until it succeeds, fails otherwise than with
// Unavailable, or has been tried fanAttempts times, waiting a second
// between attempts. Retries are counted.
func (f *pgFanout) retry(fn func() error) error {
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil || status.Code(err) != codes.Unavailable || attempt == fanAttempts {
			return err
		}
		f.retries.Add(1)
		select {
		case <-f.ctx.Done():
			return err
		case <-time.After(time.Second):
		}
	}
}

// connect attests agent i at its server, opens its Sync stream, checks
// the first (full) message and starts its receive loop.
func (f *pgFanout) connect(i int, token string) error {
	cfg := nodeclient.Config{
		Address:     f.pair.addrs[server(i)],
		TrustDomain: benchTD,
		Authorities: func() []*x509.Certificate { return f.auth },
		LocalAddr:   agentAddr(i),
	}
	c, err := attestSimulated(f.ctx, cfg, token, f.retry)
	if err != nil {
		return fmt.Errorf("agent %d: %w", i, err)
	}
	f.mu.Lock()
	f.clients = append(f.clients, c)
	f.mu.Unlock()
	var stream *nodeclient.SyncStream
	err = f.retry(func() error {
		var err error
		stream, err = c.Sync(f.ctx)
		return err
	})
	if err != nil {
		return fmt.Errorf("agent %d: sync: %w", i, err)
	}
	first, err := stream.Recv()
	if err != nil {
		return fmt.Errorf("agent %d: first sync message: %w", i, err)
	}
	if !first.GetFull() || len(first.GetEntries()) != f.n.AgentEntries {
		return fmt.Errorf("agent %d: first sync message: full %v with %d entries, want %d", i, first.GetFull(), len(first.GetEntries()), f.n.AgentEntries)
	}
	f.wg.Go(func() { f.receive(i, stream) })
	return nil
}

// agentAddr is the loopback address simulated agent i connects from:
// each its own, as hosts of a fleet are, so that the servers' bounds per
// source address (on attestations in progress) treat them as a fleet,
// not as one host. Linux routes all of 127.0.0.0/8 to the loopback
// interface.
func agentAddr(i int) *net.TCPAddr {
	n := i + 1
	return &net.TCPAddr{IP: net.IPv4(127, byte(1+n>>16), byte(n>>8), byte(n))}
}

func (f *pgFanout) receive(i int, stream *nodeclient.SyncStream) {
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

// sample creates one entry for agent target through server k%2 (so that
// half the changes go through the server the agent is not connected to)
// and returns how long from sending the call the agent's stream took to
// deliver it.
func (f *pgFanout) sample(target, k int, timeout time.Duration) (time.Duration, error) {
	spiffeID := fanEntryID(target, fmt.Sprintf("sample-%d", k))
	start := time.Now()
	ids, err := f.create(k%2, []*adminv1.Entry{{SpiffeId: spiffeID, ParentId: fanAgentID(target), Selectors: []string{fanSelector(target)}}})
	if err != nil {
		return 0, err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case ev := <-f.events:
			if ev.err != nil {
				return 0, fmt.Errorf("agent %d: sync stream ended: %w", ev.agent, ev.err)
			}
			if ev.agent != target {
				f.strays.Add(1)
				continue
			}
			m := ev.msg
			if m.GetFull() || len(m.GetEntries()) != 1 || m.GetEntries()[0].GetId() != ids[0] {
				return 0, fmt.Errorf("agent %d: got a message of %d entries (full %v), want the one new entry %s", target, len(m.GetEntries()), m.GetFull(), ids[0])
			}
			return ev.at.Sub(start), nil
		case <-t.C:
			return 0, fmt.Errorf("entry %s did not reach agent %d within %s", spiffeID, target, timeout)
		case <-f.ctx.Done():
			return 0, f.ctx.Err()
		}
	}
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

func firstError(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
