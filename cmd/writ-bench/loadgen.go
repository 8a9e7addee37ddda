package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// callTimeout bounds each Workload API call of a load.
const callTimeout = 10 * time.Second

// callFunc makes one call; i counts the caller's calls from 0.
type callFunc func(ctx context.Context, i int) error

// loadResult is the latency of every call that started and ended in the
// measurement window.
type loadResult struct {
	lat    []time.Duration
	window time.Duration
	total  int // calls completed, the warm-up's included
}

func (r loadResult) rate() float64 { return float64(len(r.lat)) / r.window.Seconds() }

// runLoad runs each call in its own goroutine, back to back, for warmup
// (unmeasured) and then dur. It stops at the first error.
func runLoad(ctx context.Context, calls []callFunc, warmup, dur time.Duration) (loadResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	ws, we := start.Add(warmup), start.Add(warmup+dur)
	lats := make([][]time.Duration, len(calls))
	totals := make([]int, len(calls))
	errs := make([]error, len(calls))
	var wg sync.WaitGroup
	for k, call := range calls {
		wg.Go(func() {
			lat := make([]time.Duration, 0, 1024)
			defer func() { lats[k] = lat }()
			for i := 0; ; i++ {
				t0 := time.Now()
				if !t0.Before(we) || ctx.Err() != nil {
					return
				}
				cctx, ccancel := context.WithTimeout(ctx, callTimeout)
				err := call(cctx, i)
				ccancel()
				t1 := time.Now()
				if err != nil {
					if ctx.Err() == nil {
						errs[k] = err
						cancel()
					}
					return
				}
				totals[k]++
				if !t0.Before(ws) && !t1.After(we) {
					lat = append(lat, t1.Sub(t0))
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return loadResult{}, err
	}
	if err := ctx.Err(); err != nil {
		return loadResult{}, err
	}
	var all []time.Duration
	total := 0
	for k, l := range lats {
		all = append(all, l...)
		total += totals[k]
	}
	return loadResult{lat: all, window: dur, total: total}, nil
}

// wlScenario is a Workload API load.
type wlScenario struct {
	name    string // scX509C1, ...
	callers int    // each with its own client, and so connection
	// newCall returns caller k's call on client c.
	newCall func(ctx context.Context, c *workloadapi.Client, k int) (callFunc, error)
	// minSlice, if set, is the shortest measurement of a round: calls
	// that each take tens of milliseconds need longer than a smoke run's
	// slices to complete in one.
	minSlice time.Duration
}

// x509One calls FetchX509SVID: the first SVID, parsed.
func x509One(_ context.Context, c *workloadapi.Client, _ int) (callFunc, error) {
	return func(ctx context.Context, _ int) error {
		s, err := c.FetchX509SVID(ctx)
		if err == nil && s.ID.IsZero() {
			err = errors.New("SVID without an ID")
		}
		return err
	}, nil
}

// x509All calls FetchX509SVIDs: all n SVIDs, parsed.
func x509All(n int) func(context.Context, *workloadapi.Client, int) (callFunc, error) {
	return func(_ context.Context, c *workloadapi.Client, _ int) (callFunc, error) {
		return func(ctx context.Context, _ int) error {
			s, err := c.FetchX509SVIDs(ctx)
			if err == nil && len(s) != n {
				err = fmt.Errorf("got %d SVIDs, want %d", len(s), n)
			}
			return err
		}, nil
	}
}

// jwtFixed fetches a JWT-SVID for the same audience every time.
func jwtFixed(aud string) func(context.Context, *workloadapi.Client, int) (callFunc, error) {
	return func(_ context.Context, c *workloadapi.Client, _ int) (callFunc, error) {
		return func(ctx context.Context, _ int) error {
			_, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud})
			return err
		}, nil
	}
}

// jwtNew fetches a JWT-SVID for a new audience every time, in every round:
// the agent has none cached and asks the server.
func jwtNew(_ context.Context, c *workloadapi.Client, k int) (callFunc, error) {
	n := 0 // the call is made by one goroutine at a time
	return func(ctx context.Context, _ int) error {
		n++
		_, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: fmt.Sprintf("first-%d-%d", k, n)})
		return err
	}, nil
}

// validate validates, every time, a token fetched once for aud.
func validate(aud string) func(context.Context, *workloadapi.Client, int) (callFunc, error) {
	return func(ctx context.Context, c *workloadapi.Client, _ int) (callFunc, error) {
		fctx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		s, err := c.FetchJWTSVID(fctx, jwtsvid.Params{Audience: aud})
		if err != nil {
			return nil, fmt.Errorf("fetch a token to validate: %w", err)
		}
		token := s.Marshal()
		return func(ctx context.Context, _ int) error {
			_, err := c.ValidateJWTSVID(ctx, token, aud)
			return err
		}, nil
	}
}

// newClient returns a go-spiffe Workload API client of socket.
func newClient(ctx context.Context, socket string) (*workloadapi.Client, error) {
	abs, err := filepath.Abs(socket)
	if err != nil {
		return nil, err
	}
	return workloadapi.New(ctx, workloadapi.WithAddr("unix://"+abs))
}

// wlTarget is a Workload API measured: the stub or Writ's agent.
type wlTarget struct {
	prefix string // "stub" or "writ"
	socket string
	sc     wlScenario
	// pids, if set, are the processes whose CPU time per call is
	// recorded (the figure <name>.cpu_per_call, if the catalogue has it).
	pids []int
}

// wlRun is a target being measured.
type wlRun struct {
	wlTarget
	clients []*workloadapi.Client
	calls   []callFunc
	lat     []time.Duration
	window  time.Duration
	err     error
	// ticks and total: CPU clock ticks of pids and calls completed
	// over every round, warm-ups included.
	ticks, total int64
}

// setup connects the callers.
func (r *wlRun) setup(ctx context.Context) error {
	for k := range r.sc.callers {
		c, err := newClient(ctx, r.socket)
		if err != nil {
			return err
		}
		r.clients = append(r.clients, c)
		call, err := r.sc.newCall(ctx, c, k)
		if err != nil {
			return err
		}
		r.calls = append(r.calls, call)
	}
	return nil
}

func (r *wlRun) close() {
	for _, c := range r.clients {
		c.Close()
	}
}

// measureWorkload measures the targets for cfg.LoadDur each, alternating
// between them in cfg.Rounds rounds so that a change in the machine's
// speed affects each alike and their ratio holds. Each caller has its own
// client, kept across rounds. A target that fails is dropped and its
// figures marked with the error.
func (b *bench) measureWorkload(ctx context.Context, targets ...wlTarget) {
	var runs []*wlRun
	for _, t := range targets {
		r := &wlRun{wlTarget: t}
		defer r.close()
		r.err = r.setup(ctx)
		runs = append(runs, r)
	}
	slice := b.cfg.LoadDur / time.Duration(b.cfg.Rounds)
	for _, t := range targets {
		slice = max(slice, t.sc.minSlice)
	}
	for round := range b.cfg.Rounds {
		warmup := b.cfg.Warmup
		if round > 0 {
			warmup /= 4
		}
		for _, r := range runs {
			if r.err != nil {
				continue
			}
			t0, err := cpuTicksOf(r.pids)
			if err != nil {
				r.err = err
				continue
			}
			res, err := runLoad(ctx, r.calls, warmup, slice)
			if err != nil {
				r.err = err
				continue
			}
			t1, err := cpuTicksOf(r.pids)
			if err != nil {
				r.err = err
				continue
			}
			r.lat = append(r.lat, res.lat...)
			r.window += res.window
			r.ticks += t1 - t0
			r.total += int64(res.total)
		}
	}
	for _, r := range runs {
		name := r.prefix + "." + r.sc.name
		if r.err == nil {
			r.err = b.record(name, r)
		}
		if r.err != nil {
			b.fail(fmt.Errorf("%s: %w", name, r.err), name+".")
		}
	}
}

// record sets the figures of a measured target.
func (b *bench) record(name string, r *wlRun) error {
	s := durationsMS(r.lat)
	sum, err := s.Summarize()
	if err != nil {
		return fmt.Errorf("no call completed within %s", r.window)
	}
	rate := float64(sum.N) / r.window.Seconds()
	params := map[string]int{"callers": r.sc.callers, "rounds": b.cfg.Rounds}
	b.set(name+".p50", sum.P50, sum.N, params)
	b.set(name+".p99", sum.P99, sum.N, params)
	b.set(name+".rate", rate, sum.N, params)
	b.dist[name] = s
	cpu := ""
	if f := b.res.find(name + ".cpu_per_call"); f != nil && len(r.pids) > 0 && r.total > 0 {
		us := float64(r.ticks) * 1e6 / float64(clockTicksPerSec) / float64(r.total)
		b.set(f.Name, us, int(r.total), params)
		of := "server and agent"
		if r.prefix == relayPrefix {
			of = "relay and signer"
		}
		cpu = fmt.Sprintf("; %s CPU %.0f µs per call", of, us)
	}
	b.prog.printf("%-28s p50 %s ms  p99 %s ms  %s calls/s  (%d calls; %s%s)", name, msNum(sum.P50), msNum(sum.P99), num(rate), sum.N, loadNow(), cpu)
	return nil
}

// clockTicksPerSec is USER_HZ, the unit of /proc/<pid>/stat's times (100
// on every Linux architecture Go supports).
const clockTicksPerSec = 100

// cpuTicksOf returns the CPU time of pids, in clock ticks.
func cpuTicksOf(pids []int) (int64, error) {
	var sum int64
	for _, pid := range pids {
		t, err := cpuTicks(pid)
		if err != nil {
			return 0, err
		}
		sum += t
	}
	return sum, nil
}

// startStub starts a stub with an n-SVID response on socket.
func (b *bench) startStub(ctx context.Context, socket string, n int) (*childProc, error) {
	c, err := b.startChild("stub", socket, n)
	if err != nil {
		return nil, err
	}
	if _, err := c.waitLine(ctx, readyLine, b.cfg.Timeout); err != nil {
		c.stop()
		return nil, fmt.Errorf("stub Workload API: %w", err)
	}
	return c, nil
}
