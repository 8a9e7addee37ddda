package main

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
)

// Time-to-effect figures of the compromise responses: taint, entry
// delete, agent ban.
const (
	figTaintP50  = "lifecycle.taint_resigned.p50"
	figTaintP99  = "lifecycle.taint_resigned.p99"
	figTaintMax  = "lifecycle.taint_resigned.max"
	figDeleteP50 = "lifecycle.entry_delete_gone.p50"
	figDeleteP99 = "lifecycle.entry_delete_gone.p99"
	figBanP50    = "lifecycle.agent_ban_cut.p50"
	figBanP99    = "lifecycle.agent_ban_cut.p99"
)

// lifecycleAgentB is the second agent of the lifecycle figures.
const lifecycleAgentB = "spiffe://bench.test/writ/agent/bench-b"

// lifecycleCounts sizes the lifecycle figures.
type lifecycleCounts struct {
	// SVIDs is the number of workload X.509-SVIDs, half on each agent.
	SVIDs                                   int
	TaintSamples, DeleteSamples, BanSamples int
}

func lifecycleConfig(cfg Config) lifecycleCounts {
	if cfg.Smoke {
		return lifecycleCounts{SVIDs: 40, TaintSamples: 3, DeleteSamples: 5, BanSamples: 3}
	}
	return lifecycleCounts{SVIDs: 1000, TaintSamples: 20, DeleteSamples: 50, BanSamples: 10}
}

// lifecycleFigures are the catalogue's lifecycle figures.
func lifecycleFigures(cfg Config) []*Figure {
	lc := lifecycleConfig(cfg)
	taint := fmt.Sprintf("from `writ ca x509 taint` of the old CA returning (after `writ ca rotate --wait`) to the last of %s workload X.509-SVIDs on two agents (%s each) being served re-signed by the new CA on watching Workload API streams", count(lc.SVIDs), count(lc.SVIDs/2))
	del := "from the admin API's DeleteEntry returning to a watching Workload API stream no longer holding the entry's SVID (0 if that came first)"
	ban := "from the admin API's BanAgent returning to the banned agent serving nothing on its Workload API (the server cut its Sync stream; it dropped every SVID)"
	spireTaint := &Reference{Value: 5000, Of: "SPIRE", Note: "about 5-10 s, from the issue"}
	return []*Figure{
		{Name: figTaintP50, Unit: unitMS, Description: "compromise response: " + taint + ": median", Reference: spireTaint},
		{Name: figTaintP99, Unit: unitMS, Description: "the same: 99th percentile"},
		{Name: figTaintMax, Unit: unitMS, Description: "the same: maximum (p100)", Target: below(1000, "< 1 s at p100")},
		{Name: figDeleteP50, Unit: unitMS, Description: "compromise response: " + del + ": median"},
		{Name: figDeleteP99, Unit: unitMS, Description: "the same: 99th percentile"},
		{Name: figBanP50, Unit: unitMS, Description: "compromise response: " + ban + ": median"},
		{Name: figBanP99, Unit: unitMS, Description: "the same: 99th percentile"},
	}
}

// renderLifecycle writes the report's section on the lifecycle figures.
func renderLifecycle(w *mdWriter, r *Results) {
	w.p("## Compromise response: time to effect")
	w.p("")
	w.p("One server and two agents; each sample is timed from the command or admin call returning to the effect seen by a workload watching the agent's FetchX509SVID stream.")
	w.p("")
	var rows [][]string
	for _, c := range []struct{ label, p50, p99, max string }{
		{"taint -> re-signed", figTaintP50, figTaintP99, figTaintMax},
		{"entry delete -> SVID gone", figDeleteP50, figDeleteP99, ""},
		{"agent ban -> agent cut off", figBanP50, figBanP99, ""},
	} {
		f := r.find(c.p50)
		n := ""
		if f != nil && f.Value != nil {
			n = fmt.Sprint(f.Samples)
		}
		maxCell, target := "", ""
		if c.max != "" {
			maxCell, target = cell(r, c.max), metCell(r.find(c.max))
		}
		rows = append(rows, []string{c.label, n, cell(r, c.p50), cell(r, c.p99), maxCell, refCell(f), target})
	}
	w.table([]string{"Response", "Samples", "p50", "p99", "max", ReferenceSource, "Target"}, rows)
}

// measureLifecycle measures the lifecycle figures on a new server with
// two agents; failures are recorded in the figures.
func (b *bench) measureLifecycle(ctx context.Context, bin string) {
	lc := lifecycleConfig(b.cfg)
	b.prog.phase(fmt.Sprintf("compromise response: taint, entry delete and ban with %s SVIDs on two agents", count(lc.SVIDs)))
	w, err := b.startPair(ctx, bin, "D")
	if err != nil {
		b.fail(err, "lifecycle.")
		return
	}
	defer w.close()
	dir := filepath.Join(b.tmp, "D")
	agentB, wlB, err := b.startSecondAgent(ctx, bin, w, dir)
	if err != nil {
		b.fail(err, "lifecycle.")
		return
	}
	defer agentB.stop()
	l := &lifecycleRun{b: b, bin: bin, w: w, wlB: wlB, dirA: filepath.Join(dir, "a"), dirB: filepath.Join(dir, "b2"),
		agents: adminv1.NewAgentServiceClient(w.conn), agentB: agentB}

	// Half the SVIDs on each agent, all for this process.
	var es []*adminv1.Entry
	for i := range lc.SVIDs {
		e := w.workloadEntry(fmt.Sprintf("/bench/lifecycle/w%d", i))
		if i%2 == 1 {
			e.ParentId = lifecycleAgentB
		}
		es = append(es, e)
	}
	if _, _, err := w.create(ctx, es, b.cfg.Batch); err != nil {
		b.fail(err, "lifecycle.")
		return
	}
	l.perAgent = lc.SVIDs / 2
	for _, sock := range []string{w.wlSock, wlB} {
		if err := waitFor(ctx, socketWait, "the Workload API socket", func() (bool, error) { return isSocket(sock), nil }, w.server, w.agent, agentB); err != nil {
			b.fail(err, "lifecycle.")
			return
		}
	}
	if l.watchA, err = startSVIDWatcher(ctx, w.wlSock); err != nil {
		b.fail(err, "lifecycle.")
		return
	}
	defer func() { l.watchA.close() }()
	if l.watchB, err = startSVIDWatcher(ctx, wlB); err != nil {
		b.fail(err, "lifecycle.")
		return
	}
	defer func() { l.watchB.close() }()
	for _, wt := range []*svidWatcher{l.watchA, l.watchB} {
		if _, err := wt.await(ctx, b.cfg.Timeout, l.hasAll("")); err != nil {
			b.fail(fmt.Errorf("every workload SVID: %w", err), "lifecycle.")
			return
		}
	}

	if err := l.taints(ctx, lc.TaintSamples); err != nil {
		b.fail(err, "lifecycle.taint_resigned.")
	}
	if err := l.deletes(ctx, lc.DeleteSamples); err != nil {
		b.fail(err, "lifecycle.entry_delete_gone.")
	}
	if err := l.bans(ctx, lc.BanSamples); err != nil {
		b.fail(err, "lifecycle.agent_ban_cut.")
	}
}

// startSecondAgent starts an agent for lifecycleAgentB next to w's, and
// returns it with its Workload API socket.
func (b *bench) startSecondAgent(ctx context.Context, bin string, w *writEnv, dir string) (*writProc, string, error) {
	token, err := b.runWrit(ctx, bin, "token", "generate", "--spiffe-id", lifecycleAgentB, "--admin-socket", w.adminSock)
	if err != nil {
		return nil, "", err
	}
	agentDir, sock := filepath.Join(dir, "b2"), filepath.Join(dir, "wl2.sock")
	p, err := b.startWrit(bin, "D-agent-b", []string{"WRIT_JOIN_TOKEN=" + strings.TrimSpace(token)},
		"agent", "run", "--server-address", w.server.logs.bindAddress(), "--trust-domain", benchTD.Name(),
		"--data-dir", agentDir, "--socket-path", sock, "--trust-bundle", filepath.Join(dir, "bundle.pem"),
		"--log-format", "json", "--log-level", "info")
	if err != nil {
		return nil, "", err
	}
	if err := b.waitHealthy(ctx, p, "agent", "healthcheck", "--data-dir", agentDir, "--timeout", "1s"); err != nil {
		return nil, "", err
	}
	return p, sock, nil
}

// lifecycleRun is the state of measureLifecycle.
type lifecycleRun struct {
	b              *bench
	bin            string
	w              *writEnv
	wlB            string
	dirA, dirB     string
	agents         adminv1.AgentServiceClient
	watchA, watchB *svidWatcher
	agentB         *writProc
	perAgent       int
}

// hasAll is the condition "all the agent's workload SVIDs are served,
// signed by the CA with this ID (any CA if empty)".
func (l *lifecycleRun) hasAll(caID string) func(svids map[string]string, ended bool) bool {
	return func(svids map[string]string, ended bool) bool {
		if ended || len(svids) < l.perAgent {
			return false
		}
		n := 0
		for id, aki := range svids {
			if strings.HasPrefix(id, "spiffe://"+benchTD.Name()+"/bench/lifecycle/w") && (caID == "" || aki == caID) {
				n++
			}
		}
		return n == l.perAgent
	}
}

// activeIDs returns the IDs of the active X.509 and JWT authorities.
func (l *lifecycleRun) activeIDs(ctx context.Context) (x509ID, jwtID string, err error) {
	out, err := l.b.runWrit(ctx, l.bin, "ca", "x509", "show", "--output", "json", "--admin-socket", l.w.adminSock)
	if err != nil {
		return "", "", err
	}
	jwtOut, err := l.b.runWrit(ctx, l.bin, "ca", "jwt", "show", "--output", "json", "--admin-socket", l.w.adminSock)
	if err != nil {
		return "", "", err
	}
	pick := func(js string) (string, error) {
		var list []struct{ ID, State string }
		if err := json.Unmarshal([]byte(js), &list); err != nil {
			return "", fmt.Errorf("writ ca show: %w", err)
		}
		for _, a := range list {
			if a.State == "active" {
				return a.ID, nil
			}
		}
		return "", errors.New("writ ca show: no active authority")
	}
	if x509ID, err = pick(out); err != nil {
		return "", "", err
	}
	jwtID, err = pick(jwtOut)
	return x509ID, jwtID, err
}

// agentSVIDIssuer returns the ID of the CA that signed the agent SVID the
// agent in dataDir saved.
func agentSVIDIssuer(dataDir string) (string, error) {
	raw, err := os.ReadFile(filepath.Join(dataDir, "agent_state.json"))
	if err != nil {
		return "", err
	}
	var st struct {
		SVID [][]byte `json:"svid"`
	}
	if err := json.Unmarshal(raw, &st); err != nil || len(st.SVID) == 0 {
		return "", fmt.Errorf("agent state: %v", err)
	}
	c, err := x509.ParseCertificate(st.SVID[0])
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(c.AuthorityKeyId), nil
}

// taints measures taint -> re-signed: rotate with --wait, taint the old
// X.509 CA, time until every workload SVID on both agents is served
// signed by the new one; then, once both agents renewed their own SVIDs,
// revoke the old keys so that the bundle does not grow.
func (l *lifecycleRun) taints(ctx context.Context, samples int) error {
	b, adm := l.b, []string{"--admin-socket", l.w.adminSock}
	var lat []time.Duration
	for i := range samples {
		oldX509, oldJWT, err := l.activeIDs(ctx)
		if err != nil {
			return err
		}
		if _, err := b.runWrit(ctx, l.bin, append([]string{"ca", "rotate", "--wait"}, adm...)...); err != nil {
			return err
		}
		newX509, _, err := l.activeIDs(ctx)
		if err != nil {
			return err
		}
		doneA := l.watchA.expect(l.hasAll(newX509))
		doneB := l.watchB.expect(l.hasAll(newX509))
		if _, err := b.runWrit(ctx, l.bin, append([]string{"ca", "x509", "taint", "--id", oldX509}, adm...)...); err != nil {
			return err
		}
		returned := time.Now()
		var last time.Time
		for _, d := range []<-chan time.Time{doneA, doneB} {
			at, err := waitAt(ctx, d, b.cfg.Timeout)
			if err != nil {
				return fmt.Errorf("sample %d: workload SVIDs re-signed by %s: %w", i+1, newX509, err)
			}
			last = maxTime(last, at)
		}
		lat = append(lat, max(0, last.Sub(returned)))
		for _, dir := range []string{l.dirA, l.dirB} {
			err := waitFor(ctx, b.cfg.Timeout, "the agent SVID renewed by the new CA", func() (bool, error) {
				id, err := agentSVIDIssuer(dir)
				return err == nil && id == newX509, nil
			}, l.w.server, l.w.agent, l.agentB)
			if err != nil {
				return err
			}
		}
		for _, args := range [][]string{
			{"ca", "x509", "revoke", "--id", oldX509, "--force"},
			{"ca", "jwt", "taint", "--id", oldJWT},
			{"ca", "jwt", "revoke", "--id", oldJWT, "--force"},
		} {
			if _, err := b.runWrit(ctx, l.bin, append(args, adm...)...); err != nil {
				return err
			}
		}
	}
	sum, err := durationsMS(lat).Summarize()
	if err != nil {
		return err
	}
	params := map[string]int{"svids": 2 * l.perAgent, "agents": 2}
	b.set(figTaintP50, sum.P50, sum.N, params)
	b.set(figTaintP99, sum.P99, sum.N, params)
	b.set(figTaintMax, sum.Max, sum.N, params)
	b.prog.printf("taint -> %s SVIDs re-signed: p50 %s ms, p99 %s ms, max %s ms (%d samples)", count(2*l.perAgent), msNum(sum.P50), msNum(sum.P99), msNum(sum.Max), sum.N)
	return nil
}

// deletes measures entry delete -> SVID gone on agent A.
func (l *lifecycleRun) deletes(ctx context.Context, samples int) error {
	b := l.b
	var lat []time.Duration
	early := 0
	for i := range samples {
		e := l.w.workloadEntry(fmt.Sprintf("/bench/lifecycle/del%d", i))
		ids, _, err := l.w.create(ctx, []*adminv1.Entry{e}, 1)
		if err != nil {
			return err
		}
		if _, err := l.watchA.await(ctx, b.cfg.Timeout, func(s map[string]string, _ bool) bool { _, ok := s[e.SpiffeId]; return ok }); err != nil {
			return fmt.Errorf("sample %d: the SVID of %s: %w", i+1, e.SpiffeId, err)
		}
		gone := l.watchA.expect(func(s map[string]string, ended bool) bool { _, ok := s[e.SpiffeId]; return !ok && !ended })
		if err := l.w.delete(ctx, ids...); err != nil {
			return err
		}
		returned := time.Now()
		at, err := waitAt(ctx, gone, b.cfg.Timeout)
		if err != nil {
			return fmt.Errorf("sample %d: removal of %s: %w", i+1, e.SpiffeId, err)
		}
		if at.Before(returned) {
			early++
		}
		lat = append(lat, max(0, at.Sub(returned)))
	}
	sum, err := durationsMS(lat).Summarize()
	if err != nil {
		return err
	}
	params := map[string]int{"gone_before_return": early}
	b.set(figDeleteP50, sum.P50, sum.N, params)
	b.set(figDeleteP99, sum.P99, sum.N, params)
	b.prog.printf("entry delete -> SVID gone: p50 %s ms, p99 %s ms (%d samples; %d gone before DeleteEntry returned, counted as 0)", msNum(sum.P50), msNum(sum.P99), sum.N, early)
	return nil
}

// bans measures ban -> agent cut off on agent B, unbanning it and
// waiting for its SVIDs after each sample.
func (l *lifecycleRun) bans(ctx context.Context, samples int) error {
	b := l.b
	var lat []time.Duration
	for i := range samples {
		cut := l.watchB.expect(func(s map[string]string, ended bool) bool { return ended || len(s) == 0 })
		if _, err := l.agents.BanAgent(ctx, &adminv1.BanAgentRequest{SpiffeId: lifecycleAgentB}); err != nil {
			return fmt.Errorf("BanAgent: %w", err)
		}
		returned := time.Now()
		at, err := waitAt(ctx, cut, b.cfg.Timeout)
		if err != nil {
			return fmt.Errorf("sample %d: the banned agent still serves SVIDs: %w", i+1, err)
		}
		lat = append(lat, max(0, at.Sub(returned)))
		if _, err := l.agents.UnbanAgent(ctx, &adminv1.UnbanAgentRequest{SpiffeId: lifecycleAgentB}); err != nil {
			return fmt.Errorf("UnbanAgent: %w", err)
		}
		// The agent answers PermissionDenied meanwhile, which ends the
		// stream: watch again until its SVIDs are back.
		err = waitFor(ctx, b.cfg.Timeout, "the unbanned agent serving its SVIDs", func() (bool, error) {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			w, err := startSVIDWatcher(ctx, l.wlB)
			if err != nil {
				return false, nil
			}
			if _, err := w.await(cctx, 2*time.Second, l.hasAll("")); err != nil {
				w.close()
				return false, nil
			}
			l.watchB.close()
			l.watchB = w
			return true, nil
		}, l.w.server)
		if err != nil {
			return err
		}
	}
	sum, err := durationsMS(lat).Summarize()
	if err != nil {
		return err
	}
	b.set(figBanP50, sum.P50, sum.N, nil)
	b.set(figBanP99, sum.P99, sum.N, nil)
	b.prog.printf("agent ban -> agent cut off: p50 %s ms, p99 %s ms (%d samples)", msNum(sum.P50), msNum(sum.P99), sum.N)
	return nil
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// waitAt waits for the time a condition held.
func waitAt(ctx context.Context, ch <-chan time.Time, timeout time.Duration) (time.Time, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case at := <-ch:
		return at, nil
	case <-t.C:
		return time.Time{}, fmt.Errorf("not within %s", timeout)
	case <-ctx.Done():
		return time.Time{}, ctx.Err()
	}
}

// svidWatcher follows a raw FetchX509SVID stream and knows, after each
// message, the SPIFFE IDs served with the ID of the CA that signed each
// (the leaf's AuthorityKeyId in hex). Conditions registered with expect
// are checked on every message, with its arrival time, so that a wait
// learns when a condition first held, not when it looked.
type svidWatcher struct {
	conn   *grpc.ClientConn
	cancel context.CancelFunc
	done   chan struct{}

	mu    sync.Mutex // guards svids, ended, conds
	svids map[string]string
	ended bool
	conds []*svidCond
}

type svidCond struct {
	cond func(svids map[string]string, ended bool) bool
	at   chan time.Time // buffered 1
}

func startSVIDWatcher(ctx context.Context, socket string) (*svidWatcher, error) {
	conn, err := grpc.NewClient("unix:"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(ctx, metadata.Pairs("workload.spiffe.io", "true")))
	stream, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		cancel()
		conn.Close()
		return nil, err
	}
	w := &svidWatcher{conn: conn, cancel: cancel, done: make(chan struct{}), svids: map[string]string{}}
	go w.recv(stream)
	return w, nil
}

func (w *svidWatcher) recv(stream grpc.ServerStreamingClient[workload.X509SVIDResponse]) {
	defer close(w.done)
	// Issuers by certificate chain: only SVIDs new since the last
	// message are parsed, so that the watcher keeps up with the stream.
	known := map[string]string{}
	for {
		resp, err := stream.Recv()
		at := time.Now()
		svids := map[string]string{}
		next := make(map[string]string, len(resp.GetSvids()))
		for _, s := range resp.GetSvids() {
			chain := string(s.GetX509Svid())
			aki, ok := known[chain]
			if !ok {
				if certs, err := x509.ParseCertificates(s.GetX509Svid()); err == nil && len(certs) > 0 {
					aki = hex.EncodeToString(certs[0].AuthorityKeyId)
				}
			}
			next[chain] = aki
			svids[s.GetSpiffeId()] = aki
		}
		known = next
		w.mu.Lock()
		if err != nil {
			w.svids, w.ended = map[string]string{}, true
		} else {
			w.svids = svids
		}
		w.checkLocked(at)
		w.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func (w *svidWatcher) checkLocked(at time.Time) {
	kept := w.conds[:0]
	for _, c := range w.conds {
		if c.cond(w.svids, w.ended) {
			c.at <- at
			continue
		}
		kept = append(kept, c)
	}
	clear(w.conds[len(kept):])
	w.conds = kept
}

// expect returns a channel that receives the arrival time of the first
// message (from now on) after which cond holds; if it holds already, the
// current time.
func (w *svidWatcher) expect(cond func(svids map[string]string, ended bool) bool) <-chan time.Time {
	c := &svidCond{cond: cond, at: make(chan time.Time, 1)}
	w.mu.Lock()
	defer w.mu.Unlock()
	if cond(w.svids, w.ended) {
		c.at <- time.Now()
	} else {
		w.conds = append(w.conds, c)
	}
	return c.at
}

// await waits until cond holds and returns when it first did.
func (w *svidWatcher) await(ctx context.Context, timeout time.Duration, cond func(svids map[string]string, ended bool) bool) (time.Time, error) {
	return waitAt(ctx, w.expect(cond), timeout)
}

func (w *svidWatcher) close() {
	w.cancel()
	<-w.done
	w.conn.Close()
}
