package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
)

// baseEntryPath is the path of the benchmark process's own entry.
const baseEntryPath = "/bench/w0"

// openWorkloadAPI registers the benchmark's own entry and waits for its
// SVID on the agent's Workload API. The error wraps errNoWorkloadAPI if
// the agent does not serve it.
func (b *bench) openWorkloadAPI(ctx context.Context, w *writEnv) (*watcher, error) {
	base := w.workloadEntry(baseEntryPath)
	if _, _, err := w.create(ctx, []*adminv1.Entry{base}, 1); err != nil {
		return nil, err
	}
	err := waitFor(ctx, socketWait, "the Workload API socket", func() (bool, error) { return isSocket(w.wlSock), nil }, w.server, w.agent)
	if err != nil {
		if w.agent.exited() != nil || ctx.Err() != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: the agent did not create its socket (--socket-path %s) within %s of being healthy: it does not serve the Workload API yet", errNoWorkloadAPI, w.wlSock, socketWait)
	}
	watch, err := startWatcher(ctx, w.wlSock)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNoWorkloadAPI, err)
	}
	err = watch.wait(ctx, b.cfg.Timeout, func(p map[string]bool) bool { return p[base.SpiffeId] })
	if err != nil {
		watch.close()
		return nil, fmt.Errorf("%w: the benchmark's SVID (%s, selector unix:uid:%d) did not arrive on a FetchX509SVID stream: %w", errNoWorkloadAPI, base.SpiffeId, w.uid, err)
	}
	return watch, nil
}

// measureCalls measures the Workload API calls on the stub and on the
// agent of a first pair of server and agent, alternately (see
// measureWorkload). It returns the reason the agent's Workload API cannot
// be measured, wrapping errNoWorkloadAPI if it does not serve it, or nil.
func (b *bench) measureCalls(ctx context.Context, bin string, buildErr error) error {
	b.prog.phase("Workload API calls: the stub (go-spiffe proto, fixed response, no attestation) and Writ's agent, alternately")
	stubSock := [2]string{filepath.Join(b.tmp, "stub1.sock"), filepath.Join(b.tmp, "stub101.sock")}
	var stubErr [2]error
	for i, n := range []int{1, 101} {
		s, err := b.startStub(ctx, stubSock[i], n)
		if err != nil {
			stubErr[i] = err
			continue
		}
		defer s.stop()
	}
	if stubErr[0] != nil {
		b.fail(stubErr[0], "stub."+scX509C1+".", "stub."+scX509C16+".", "stub."+scJWT+".", "stub."+scJWTC16+".", "stub."+scValidate+".")
	}
	if stubErr[1] != nil {
		b.fail(stubErr[1], "stub."+scX509S101+".")
	}

	relaySock := filepath.Join(b.tmp, "relay.sock")
	relay, relayErr := b.startRelay(ctx, relaySock)
	if relayErr != nil {
		b.fail(relayErr, relayPrefix+".")
	} else {
		defer relay.stop()
	}

	wlErr := buildErr
	var w *writEnv
	var watch *watcher
	if wlErr == nil {
		w, wlErr = b.startPair(ctx, bin, "A")
	}
	if wlErr == nil {
		defer w.close()
		watch, wlErr = b.openWorkloadAPI(ctx, w)
	}
	if wlErr != nil {
		b.fail(wlErr, "writ.")
	} else {
		defer watch.close()
	}

	// targets returns the targets of a scenario that can be measured:
	// the stub's, Writ's and, for a first JWT-SVID, the relay stub's.
	targets := func(stub, writ *wlScenario, stubIdx int) []wlTarget {
		var ts []wlTarget
		if stub != nil && stubErr[stubIdx] == nil {
			ts = append(ts, wlTarget{prefix: "stub", socket: stubSock[stubIdx], sc: *stub})
		}
		if writ != nil && wlErr == nil {
			ts = append(ts, wlTarget{prefix: "writ", socket: w.wlSock, sc: *writ, pids: []int{w.server.pid(), w.agent.pid()}})
		}
		if writ != nil && (writ.name == scJWTFirst || writ.name == scJWTFirstC16) && relayErr == nil {
			ts = append(ts, wlTarget{prefix: relayPrefix, socket: relaySock, sc: *writ, pids: relay.pids()})
		}
		return ts
	}
	x509C1 := &wlScenario{name: scX509C1, callers: 1, newCall: x509One}
	x509C16 := &wlScenario{name: scX509C16, callers: 16, newCall: x509One}
	for _, p := range []struct{ stub, writ *wlScenario }{
		{x509C1, x509C1},
		{x509C16, x509C16},
		{&wlScenario{name: scJWT, callers: 1, newCall: jwtFixed(stubAudience)}, &wlScenario{name: scJWTCached, callers: 1, newCall: jwtFixed("bench-cached")}},
		{nil, &wlScenario{name: scJWTFirst, callers: 1, newCall: jwtNew}},
		{&wlScenario{name: scJWTC16, callers: 16, newCall: jwtFixed(stubAudience)}, &wlScenario{name: scJWTFirstC16, callers: 16, newCall: jwtNew}},
		{&wlScenario{name: scValidate, callers: 1, newCall: validate(stubAudience)}, &wlScenario{name: scValidate, callers: 1, newCall: validate("bench-validate")}},
	} {
		if ts := targets(p.stub, p.writ, 0); len(ts) > 0 {
			b.measureWorkload(ctx, ts...)
		}
	}

	// 101 SVIDs: the benchmark's own and 100 more.
	many := &wlScenario{name: scX509S101, callers: 1, newCall: x509All(101)}
	writMany := many
	if wlErr == nil {
		if err := entitle100(ctx, b.cfg, w, watch); err != nil {
			b.fail(fmt.Errorf("writ.%s: %w", scX509S101, err), "writ."+scX509S101+".")
			writMany = nil
		}
	}
	if ts := targets(many, writMany, 1); len(ts) > 0 {
		b.measureWorkload(ctx, ts...)
	}
	return wlErr
}

// entitle100 gives the benchmark 100 more SVIDs, 101 in all, and waits
// until its stream has them.
func entitle100(ctx context.Context, cfg Config, w *writEnv, watch *watcher) error {
	var es []*adminv1.Entry
	for i := range 100 {
		es = append(es, w.workloadEntry(fmt.Sprintf("/bench/many/w%d", i)))
	}
	if _, _, err := w.create(ctx, es, cfg.Batch); err != nil {
		return err
	}
	if err := watch.wait(ctx, cfg.Timeout, func(p map[string]bool) bool { return len(p) == 101 }); err != nil {
		return fmt.Errorf("waiting for 101 SVIDs (have %d): %w", watch.count(), err)
	}
	return nil
}

// measurePropagation creates entries for the benchmark one at a time and
// measures how long after BatchCreateEntry returns the new SVID arrives
// on the watching stream. Each entry is deleted, and its removal seen,
// before the next, so every sample starts from the same state.
func (b *bench) measurePropagation(ctx context.Context, w *writEnv, watch *watcher, key string) error {
	n := b.cfg.PropSamples
	b.prog.phase(fmt.Sprintf("propagation: %d samples with %s other entries", n, count(w.registered)))
	var lat, fromSend, call []time.Duration
	early := 0
	for i := range n {
		e := w.workloadEntry(fmt.Sprintf("/bench/prop/%s/w%d", key, i))
		t0 := time.Now()
		ids, _, err := w.create(ctx, []*adminv1.Entry{e}, 1)
		t1 := time.Now()
		if err != nil {
			return err
		}
		if err := watch.wait(ctx, b.cfg.Timeout, func(p map[string]bool) bool { return p[e.SpiffeId] }); err != nil {
			return fmt.Errorf("sample %d: the SVID of %s: %w", i+1, e.SpiffeId, err)
		}
		seen, _ := watch.seen(e.SpiffeId)
		d := seen.Sub(t1)
		if d < 0 { // pushed before the call's answer was read
			early++
			d = 0
		}
		lat = append(lat, d)
		fromSend = append(fromSend, seen.Sub(t0))
		call = append(call, t1.Sub(t0))
		if err := w.delete(ctx, ids...); err != nil {
			return err
		}
		if err := watch.wait(ctx, b.cfg.Timeout, func(p map[string]bool) bool { return !p[e.SpiffeId] }); err != nil {
			return fmt.Errorf("sample %d: removal of %s: %w", i+1, e.SpiffeId, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	s := durationsMS(lat)
	sum, err := s.Summarize()
	if err != nil {
		return err
	}
	ss, err := durationsMS(fromSend).Summarize()
	if err != nil {
		return err
	}
	cs, _ := durationsMS(call).Summarize()
	params := map[string]int{"entries": w.registered, "arrived_before_return": early}
	name := "propagation." + key
	b.set(name+".p50", sum.P50, sum.N, params)
	b.set(name+".p99", sum.P99, sum.N, params)
	b.set(name+".max", sum.Max, sum.N, params)
	b.set(name+".from_send.p50", ss.P50, ss.N, params)
	b.set(name+".from_send.p99", ss.P99, ss.N, params)
	b.dist[name] = s
	b.prog.printf("propagation p50 %s ms  p99 %s ms  max %s ms; from the call being sent p50 %s ms  p99 %s ms (the call itself p50 %s ms; %d of %d arrived before it returned)",
		msNum(sum.P50), msNum(sum.P99), msNum(sum.Max), msNum(ss.P50), msNum(ss.P99), msNum(cs.P50), early, n)
	return nil
}

// measureStreams opens cfg.Streams Workload API streams from a child
// process and records the agent's memory with them open.
func (b *bench) measureStreams(ctx context.Context, w *writEnv) error {
	n := b.cfg.Streams
	b.prog.phase(fmt.Sprintf("agent memory with %s open FetchX509SVID streams", count(n)))
	if _, err := waitIdle(ctx, idleQuiet, idleMax, w.server.pid(), w.agent.pid()); err != nil {
		return err
	}
	before, err := readMem(w.agent.pid())
	if err != nil {
		return err
	}
	c, err := b.startChild("streams", w.wlSock, n)
	if err != nil {
		return err
	}
	defer c.stop()
	start := time.Now()
	if _, err := c.waitLine(ctx, "open ", b.cfg.Timeout); err != nil {
		return err
	}
	b.prog.printf("%s streams open in %s", count(n), time.Since(start).Round(time.Millisecond))
	if _, err := waitIdle(ctx, idleQuiet, idleMax, w.server.pid(), w.agent.pid()); err != nil {
		return err
	}
	after, err := readMem(w.agent.pid())
	if err != nil {
		return err
	}
	per := (after.RSS - before.RSS) * 1024 / float64(n)
	b.set(figAgentRSSStreams, after.RSS, n, map[string]int{"streams": n, "entries": w.registered})
	b.set(figAgentPerStream, per, n, map[string]int{"streams": n})
	b.prog.printf("agent RSS %.1f MiB before, %.1f MiB with the streams: %.1f KiB per stream", before.RSS, after.RSS, per)
	return nil
}
