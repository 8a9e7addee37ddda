package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
)

// measureBacklog measures how soon a new entry reaches a watching
// workload when its agent has far more entries than its SVID cache keeps
// (cfg.BacklogEntries), and the agent's memory then. It uses a new pair
// of server and agent with the default --svid-cache-size.
func (b *bench) measureBacklog(ctx context.Context, bin string) error {
	b.prog.phase(fmt.Sprintf("backlog: a new entry among %s entries for one agent", count(b.cfg.BacklogEntries)))
	w, err := b.startPair(ctx, bin, "C")
	if err != nil {
		return err
	}
	defer w.close()

	base := w.workloadEntry(baseEntryPath)
	if _, _, err := w.create(ctx, []*adminv1.Entry{base}, 1); err != nil {
		return err
	}
	err = waitFor(ctx, socketWait, "the Workload API socket", func() (bool, error) { return isSocket(w.wlSock), nil }, w.server, w.agent)
	if err != nil {
		return err
	}
	watch, err := startSpiffeWatcher(ctx, w.wlSock)
	if err != nil {
		return err
	}
	defer watch.close()
	if err := watch.wait(ctx, b.cfg.Timeout, func(p map[string]bool) bool { return p[base.SpiffeId] }); err != nil {
		return fmt.Errorf("the benchmark's own SVID: %w", err)
	}

	n := b.cfg.BacklogEntries
	es := make([]*adminv1.Entry, n)
	for i := range es {
		es[i] = &adminv1.Entry{
			SpiffeId:  fmt.Sprintf("spiffe://%s/backlog/w%d", benchTD.Name(), i),
			ParentId:  agentID,
			Selectors: []string{fmt.Sprintf("unix:uid:%d", bulkUIDBase+i)},
		}
	}
	mark := w.agent.logs.syncedCount()
	start := time.Now()
	_, spent, err := w.create(ctx, es, b.cfg.Batch)
	if err != nil {
		return err
	}
	es = nil
	b.prog.printf("registered %s entries in %s", count(n), spent.Round(time.Millisecond))
	err = waitFor(ctx, b.cfg.Timeout, fmt.Sprintf("the agent to receive %s entries", count(n)), func() (bool, error) {
		return w.agent.logs.syncedCount()-mark >= n, nil
	}, w.server, w.agent)
	if err != nil {
		return err
	}
	b.prog.printf("the agent has them %s after registration began", time.Since(start).Round(time.Millisecond))
	if _, err := waitIdle(ctx, idleQuiet, idleMax, w.server.pid(), w.agent.pid()); err != nil {
		return err
	}

	var lat []time.Duration
	for i := range b.cfg.BacklogSamples {
		e := w.workloadEntry(fmt.Sprintf("/bench/backlog/new%d", i))
		ids, _, err := w.create(ctx, []*adminv1.Entry{e}, 1)
		returned := time.Now()
		if err != nil {
			return err
		}
		if err := watch.wait(ctx, b.cfg.Timeout, func(p map[string]bool) bool { return p[e.SpiffeId] }); err != nil {
			return fmt.Errorf("sample %d: the SVID of %s: %w", i+1, e.SpiffeId, err)
		}
		seen, _ := watch.seen(e.SpiffeId)
		lat = append(lat, max(0, seen.Sub(returned)))
		if err := w.delete(ctx, ids...); err != nil {
			return err
		}
		if err := watch.wait(ctx, b.cfg.Timeout, func(p map[string]bool) bool { return !p[e.SpiffeId] }); err != nil {
			return fmt.Errorf("sample %d: removal of %s: %w", i+1, e.SpiffeId, err)
		}
	}
	sum, err := durationsMS(lat).Summarize()
	if err != nil {
		return err
	}
	mem, err := readMem(w.agent.pid())
	if err != nil {
		return err
	}
	params := map[string]int{"entries": n}
	b.set(figBacklogP50, sum.P50, sum.N, params)
	b.set(figBacklogMax, sum.Max, sum.N, params)
	b.set(figBacklogRSS, mem.RSS, 0, params)
	b.set(figBacklogAnon, mem.Anon, 0, params)
	b.prog.printf("new entry to a watching client among %s entries: p50 %s ms, max %s ms; agent RSS %.1f MiB (anon %.1f)",
		count(n), msNum(sum.P50), msNum(sum.Max), mem.RSS, mem.Anon)
	return nil
}

// spiffeWatcher follows X.509 contexts with go-spiffe's Workload API
// client, as a workload does, and notes when each SPIFFE ID first
// arrived.
type spiffeWatcher struct {
	client *spiffewl.Client
	cancel context.CancelFunc
	done   chan struct{}

	mu        sync.Mutex // guards present, firstSeen, err, changed
	present   map[string]bool
	firstSeen map[string]time.Time
	err       error
	changed   chan struct{} // closed and replaced at each update
}

func startSpiffeWatcher(ctx context.Context, socket string) (*spiffeWatcher, error) {
	ctx, cancel := context.WithCancel(ctx)
	c, err := spiffewl.New(ctx, spiffewl.WithAddr("unix://"+socket))
	if err != nil {
		cancel()
		return nil, err
	}
	w := &spiffeWatcher{client: c, cancel: cancel, done: make(chan struct{}),
		present: map[string]bool{}, firstSeen: map[string]time.Time{}, changed: make(chan struct{})}
	go func() {
		defer close(w.done)
		err := c.WatchX509Context(ctx, w)
		w.mu.Lock()
		w.err = err
		close(w.changed)
		w.changed = make(chan struct{})
		w.mu.Unlock()
	}()
	return w, nil
}

// OnX509ContextUpdate implements go-spiffe's X509ContextWatcher.
func (w *spiffeWatcher) OnX509ContextUpdate(x *spiffewl.X509Context) {
	at := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	clear(w.present)
	for _, s := range x.SVIDs {
		id := s.ID.String()
		w.present[id] = true
		if _, ok := w.firstSeen[id]; !ok {
			w.firstSeen[id] = at
		}
	}
	for id := range w.firstSeen {
		if !w.present[id] {
			delete(w.firstSeen, id)
		}
	}
	close(w.changed)
	w.changed = make(chan struct{})
}

// OnX509ContextWatchError implements go-spiffe's X509ContextWatcher; the
// client retries on its own.
func (w *spiffeWatcher) OnX509ContextWatchError(error) {}

func (w *spiffeWatcher) seen(id string) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t, ok := w.firstSeen[id]
	return t, ok
}

// wait waits until cond holds for the SPIFFE IDs present.
func (w *spiffeWatcher) wait(ctx context.Context, timeout time.Duration, cond func(present map[string]bool) bool) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		w.mu.Lock()
		ok, err, ch := cond(w.present), w.err, w.changed
		w.mu.Unlock()
		if ok {
			return nil
		}
		if err != nil {
			return fmt.Errorf("watch ended: %w", err)
		}
		select {
		case <-ch:
		case <-deadline.C:
			return fmt.Errorf("not within %s", timeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (w *spiffeWatcher) close() {
	w.cancel()
	<-w.done
	w.client.Close()
}
