package agent

import (
	"container/heap"
	"context"
	"slices"
	"sync"
	"time"

	"writ.dev/writ/agent/rotate"
	"writ.dev/writ/ca/clock"
)

// maxTimerWait caps every timer the agent arms, so that a jump of the
// wall clock is noticed within it (timers count monotonic time).
const maxTimerWait = time.Minute

// maxStepBack is how far the wall clock may step back, since an SVID was
// received or a retry scheduled, before that SVID or retry is due at
// once: its due time, computed from a clock reading that now lies in the
// future, would otherwise be as much further away as the clock stepped
// (a day back, a day late), and the SVID is not valid at the new time.
const maxStepBack = time.Minute

// retryBackoff spaces the retries of an entry the server refused to sign.
var retryBackoff = rotate.Backoff{Base: time.Second, Max: 5 * time.Minute}

// priority orders pending entries: lower is signed first.
type priority uint8

const (
	// prioWanted: a connected workload matches the entry and waits.
	prioWanted priority = iota
	// prioNow: changed entries, and failed batches.
	prioNow
	// prioDue: rotations and retries, signed now if the cache still
	// holds the entry's SVID or a workload wants it (see keep), else
	// moved to the backlog.
	prioDue
	numPriorities
	// Entries created since the last full sync come after prioNow (in
	// scheduler.fresh), and the backlog, entries nobody asked for, comes
	// last: both are signed only while the cache has room for them.
)

// scheduler decides which entries are signed next: pending entries are
// signed as soon as a connection can take them, by priority then in FIFO
// order; others wait in a heap for their rotation (or retry) time, and a
// timer moves them to pending then.
type scheduler struct {
	clk  clock.Clock
	wake chan struct{} // buffered 1: pending became non-empty
	kick chan struct{} // buffered 1: the earliest due time changed
	// keep reports whether a due entry is still worth signing; nil keeps
	// all. unsigned reports whether a backlog entry still needs an SVID;
	// nil means yes. Both are set before run starts.
	keep, unsigned func(id string) bool

	mu sync.Mutex // guards the fields below
	// pending entries with their priority; queues (one per priority, in
	// FIFO order) may hold IDs no longer pending at that priority,
	// skipped by take.
	pending map[string]priority
	queues  [numPriorities][]string
	// fresh holds entries created since the last full sync, and backlog
	// the other entries without an SVID, in FIFO order, possibly twice,
	// and possibly some that no longer need one (unsigned, the pending
	// map and the due heap tell). They have no map of their own: they
	// may hold every entry of the node.
	fresh    []string
	backlog  []string
	due      dueHeap
	dueByID  map[string]*dueItem
	failures map[string]int // consecutive signing failures by entry
	// latestSet is the latest dueItem.set in due (or later).
	latestSet time.Time
}

type dueItem struct {
	id string
	at time.Time
	// set is the clock reading when the item was scheduled.
	set time.Time
	idx int
}

func newScheduler(clk clock.Clock) *scheduler {
	return &scheduler{
		clk:      clk,
		wake:     make(chan struct{}, 1),
		kick:     make(chan struct{}, 1),
		pending:  make(map[string]priority),
		dueByID:  make(map[string]*dueItem),
		failures: make(map[string]int),
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// enqueue makes ids pending now, to be signed first.
func (s *scheduler) enqueue(ids ...string) { s.enqueueAt(prioNow, ids...) }

// enqueueAt makes ids pending at priority p (or keeps a higher one they
// have).
func (s *scheduler) enqueueAt(p priority, ids ...string) {
	if len(ids) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		s.enqueueLocked(id, p)
	}
	s.compactLocked()
	signal(s.wake)
}

func (s *scheduler) enqueueLocked(id string, p priority) {
	if cur, ok := s.pending[id]; ok && cur <= p {
		return
	}
	if p != prioDue {
		s.unscheduleLocked(id)
	}
	s.pending[id] = p
	s.queues[p] = append(s.queues[p], id)
}

// addFresh adds ids, entries created since the last full sync, to be
// signed after pending ones while the cache has room for them.
func (s *scheduler) addFresh(ids ...string) {
	if len(ids) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fresh = append(s.fresh, ids...)
	signal(s.wake)
}

// addBacklog adds ids to the backlog; full replaces it (ids are then
// every entry without an SVID) and forgets the fresh ones.
func (s *scheduler) addBacklog(full bool, ids []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if full {
		s.backlog = slices.Clone(ids)
		s.fresh = nil
	} else {
		s.backlog = append(s.backlog, ids...)
	}
	if len(ids) > 0 {
		signal(s.wake)
	}
}

// remove forgets ids (removed entries).
func (s *scheduler) remove(ids ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		delete(s.pending, id)
		delete(s.failures, id)
		s.unscheduleLocked(id)
	}
	s.compactLocked()
}

// reset forgets everything.
func (s *scheduler) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.pending)
	clear(s.dueByID)
	clear(s.failures)
	s.queues = [numPriorities][]string{}
	s.fresh, s.backlog = nil, nil
	s.due = nil
}

// take removes and returns up to n pending IDs, by priority, then oldest
// first. At most room of them are fresh or backlog entries, fresh ones
// first; due entries that keep refuses move to the backlog.
func (s *scheduler) take(n, room int) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for p := range numPriorities {
		if p == prioDue {
			s.fresh = s.takeUnsignedLocked(s.fresh, &out, n, &room)
		}
		q := s.queues[p]
		i := 0
		for ; i < len(q) && len(out) < n; i++ {
			id := q[i]
			if cur, ok := s.pending[id]; !ok || cur != p {
				continue
			}
			delete(s.pending, id)
			if p == prioDue && s.keep != nil && !s.keep(id) {
				// Nobody holds or wants its SVID any more: sign it
				// only if there is room.
				s.backlog = append(s.backlog, id)
				continue
			}
			out = append(out, id)
		}
		clear(q[:i])
		q = q[i:]
		if len(q) == 0 {
			q = nil
		}
		s.queues[p] = q
	}
	s.backlog = s.takeUnsignedLocked(s.backlog, &out, n, &room)
	return out
}

// takeUnsignedLocked moves IDs from the front of q (fresh or backlog) to
// out while out has fewer than n and room is positive, skipping those
// pending, scheduled or signed, and returns what is left of q.
func (s *scheduler) takeUnsignedLocked(q []string, out *[]string, n int, room *int) []string {
	i := 0
	for ; i < len(q) && len(*out) < n && *room > 0; i++ {
		id := q[i]
		if _, ok := s.pending[id]; ok {
			continue // taken at a higher priority
		}
		if _, ok := s.dueByID[id]; ok {
			continue // signed, or failed and waiting to retry
		}
		if s.unsigned != nil && !s.unsigned(id) {
			continue
		}
		*room--
		*out = append(*out, id)
	}
	clear(q[:i])
	q = q[i:]
	if len(q) == 0 {
		return nil
	}
	return q
}

// compactLocked drops queue slots of IDs no longer pending at that
// queue's priority when they outnumber the pending ones.
func (s *scheduler) compactLocked() {
	total := 0
	for _, q := range s.queues {
		total += len(q)
	}
	if total <= 2*len(s.pending)+64 {
		return
	}
	for p, q := range s.queues {
		kept := q[:0]
		for _, id := range q {
			if cur, ok := s.pending[id]; ok && cur == priority(p) {
				// Mark it taken in this pass, so that a duplicate
				// slot is dropped.
				s.pending[id] = numPriorities
				kept = append(kept, id)
			}
		}
		for _, id := range kept {
			s.pending[id] = priority(p)
		}
		clear(q[len(kept):])
		s.queues[p] = kept
	}
}

// signedAt records a successful signing: the entry is due again at at.
func (s *scheduler) signedAt(id string, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.failures, id)
	s.scheduleLocked(id, at)
}

// failed records a failed signing and schedules a retry with backoff.
// It returns the delay.
func (s *scheduler) failed(id string, r float64) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.failures[id]
	s.failures[id] = n + 1
	// At least half the ceiling, so that retries do not bunch at zero.
	ceil := retryBackoff.Ceiling(n)
	d := ceil/2 + retryBackoff.Delay(n, r)/2
	s.scheduleLocked(id, s.clk.Now().Add(d))
	return d
}

// requeue makes ids pending again at the front of the wanted ones (a
// batch whose call failed).
func (s *scheduler) requeue(ids []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var front []string
	for _, id := range ids {
		if _, ok := s.pending[id]; ok {
			continue
		}
		if _, ok := s.dueByID[id]; ok {
			continue // rescheduled meanwhile
		}
		s.pending[id] = prioWanted
		front = append(front, id)
	}
	s.queues[prioWanted] = append(front, s.queues[prioWanted]...)
	if len(s.pending) > 0 {
		signal(s.wake)
	}
}

func (s *scheduler) scheduleLocked(id string, at time.Time) {
	delete(s.pending, id)
	set := s.clk.Now()
	if set.After(s.latestSet) {
		s.latestSet = set
	}
	if d := s.dueByID[id]; d != nil {
		d.at, d.set = at, set
		heap.Fix(&s.due, d.idx)
	} else {
		d := &dueItem{id: id, at: at, set: set}
		s.dueByID[id] = d
		heap.Push(&s.due, d)
	}
	if s.due[0].id == id {
		signal(s.kick)
	}
}

func (s *scheduler) unscheduleLocked(id string) {
	if d := s.dueByID[id]; d != nil {
		heap.Remove(&s.due, d.idx)
		delete(s.dueByID, id)
	}
}

// dueAt returns when an entry is next due (zero if not scheduled).
func (s *scheduler) dueAt(id string) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d := s.dueByID[id]; d != nil {
		return d.at
	}
	return time.Time{}
}

// run moves entries to pending when they fall due, until ctx ends.
func (s *scheduler) run(ctx context.Context) {
	t := s.clk.NewTimer(maxTimerWait)
	defer t.Stop()
	for {
		now := s.clk.Now()
		wait := maxTimerWait
		s.mu.Lock()
		moved := false
		if now.Before(s.latestSet.Add(-maxStepBack)) {
			moved = s.steppedBackLocked(now)
		}
		for len(s.due) > 0 && !s.due[0].at.After(now) {
			d := heap.Pop(&s.due).(*dueItem)
			delete(s.dueByID, d.id)
			s.enqueueLocked(d.id, prioDue)
			moved = true
		}
		if len(s.due) > 0 {
			wait = min(wait, s.due[0].at.Sub(now))
		}
		s.mu.Unlock()
		if moved {
			signal(s.wake)
		}
		t.Stop()
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		case <-s.kick:
		}
	}
}

// steppedBackLocked makes due the items scheduled at a clock reading
// more than maxStepBack after now (the wall clock stepped back since),
// and reports whether there were any.
func (s *scheduler) steppedBackLocked(now time.Time) bool {
	var back []string
	latest := time.Time{}
	for _, d := range s.due {
		if now.Before(d.set.Add(-maxStepBack)) {
			back = append(back, d.id)
		} else if d.set.After(latest) {
			latest = d.set
		}
	}
	s.latestSet = latest
	for _, id := range back {
		s.unscheduleLocked(id)
		s.enqueueLocked(id, prioDue)
	}
	return len(back) > 0
}

type dueHeap []*dueItem

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h dueHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx = i
	h[j].idx = j
}
func (h *dueHeap) Push(x any) {
	d := x.(*dueItem)
	d.idx = len(*h)
	*h = append(*h, d)
}
func (h *dueHeap) Pop() any {
	old := *h
	d := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	d.idx = -1
	return d
}

// signWanted makes the entries that connected workloads match and that
// have no X.509-SVID (svidcache.Cache.Wanted) pending first, until ctx
// ends.
func (a *Agent) signWanted(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.cache.Wanted():
			a.sched.enqueueAt(prioWanted, a.cache.TakeWanted()...)
		}
	}
}
