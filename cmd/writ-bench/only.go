package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"
)

// onlyX509Many is the --only phase that measures the FetchX509SVID case
// of a caller entitled to 101 SVIDs alone, at three entry counts.
const onlyX509Many = "x509-many"

// measureOnlyX509Many measures FetchX509SVID of 101 SVIDs, 1 and 16
// callers, beside the stub, with 0, EntriesSmall and EntriesLarge other
// entries on the agent, on one pair of server and agent: the cost of a
// call must not grow with the entries. The figures it records are those
// of the last step (EntriesLarge other entries), as in a full run; the
// earlier steps are printed only.
func (b *bench) measureOnlyX509Many(ctx context.Context, bin string) {
	names := []string{"stub." + scX509S101E10k + ".", "stub." + scX509S101E10kC16 + ".", "writ." + scX509S101E10k + ".", "writ." + scX509S101E10kC16 + "."}
	b.prog.phase("FetchX509SVID of 101 SVIDs as other entries are added to the agent, and the stub")
	w, err := b.startPair(ctx, bin, "B", allSigned(b.cfg)...)
	if err != nil {
		b.fail(err, names...)
		return
	}
	defer w.close()
	watch, err := b.openWorkloadAPI(ctx, w)
	if err != nil {
		b.fail(err, names...)
		return
	}
	defer watch.close()
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
	for _, step := range []struct {
		total int
		key   string
	}{{0, ""}, {b.cfg.EntriesSmall, memE1k}, {b.cfg.EntriesLarge, memE10k}} {
		if step.total > 0 {
			if err := b.fill(ctx, w, step.total, step.key); err != nil {
				b.fail(err, names...)
				return
			}
		}
		b.prog.printf("-- with %s other entries on the agent (agent pid %d)", count(w.registered), w.agent.pid())
		if err := b.agentCPUPerCall(ctx, w); err != nil {
			b.fail(err, names...)
			return
		}
		for _, sc := range []wlScenario{
			{name: scX509S101E10k, callers: 1, newCall: x509All(101)},
			{name: scX509S101E10kC16, callers: 16, newCall: x509All(101), minSlice: 2 * time.Second},
		} {
			b.measureWorkload(ctx, wlTarget{prefix: "stub", socket: stubSock, sc: sc}, wlTarget{prefix: "writ", socket: w.wlSock, sc: sc})
			wv, wok := b.res.value("writ." + sc.name + ".rate")
			sv, sok := b.res.value("stub." + sc.name + ".rate")
			if wok && sok {
				b.prog.printf("%d other entries, %d callers: writ/stub %.2f, writ %s µs of wall time per call", w.registered, sc.callers, wv/sv, num(1e6/wv))
			}
		}
	}
}

// userHZ is the unit of /proc/<pid>/stat's CPU times on Linux
// (USER_HZ, 100 on every architecture).
const userHZ = 100

// agentCPUPerCall makes sequential FetchX509SVID calls (all 101 SVIDs)
// from one caller on the agent, once it is idle, and prints the agent's
// CPU time (user and system) per call: unlike throughput, it hardly
// depends on what else the machine runs.
func (b *bench) agentCPUPerCall(ctx context.Context, w *writEnv) error {
	n := 1000
	if b.cfg.Smoke {
		n = 50
	}
	pid := w.agent.pid()
	if _, err := waitIdle(ctx, 300*time.Millisecond, 10*time.Second, pid); err != nil {
		return err
	}
	c, err := newClient(ctx, w.wlSock)
	if err != nil {
		return err
	}
	defer c.Close()
	call, err := x509All(101)(ctx, c, 0)
	if err != nil {
		return err
	}
	t0, err := cpuTicks(pid)
	if err != nil {
		return err
	}
	start := time.Now()
	for i := range n {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		err := call(cctx, i)
		cancel()
		if err != nil {
			return fmt.Errorf("agent CPU per call: %w", err)
		}
	}
	wall := time.Since(start)
	t1, err := cpuTicks(pid)
	if err != nil {
		return err
	}
	if t1 == t0 {
		return errors.New("agent CPU per call: no CPU time counted")
	}
	per := time.Duration(t1-t0) * time.Second / userHZ / time.Duration(n)
	b.prog.printf("%d other entries: agent CPU %s µs per FetchX509SVID call of 101 SVIDs (%d sequential calls, %d ticks, %s wall per call)", w.registered, num(float64(per.Microseconds())), n, t1-t0, (wall / time.Duration(n)).Round(time.Microsecond))
	return nil
}
