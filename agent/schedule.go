package agent

import (
	"container/heap"
	"context"
	"sync"
	"time"

	"writ.dev/writ/agent/rotate"
	"writ.dev/writ/ca/clock"
)

// maxTimerWait caps every timer the agent arms, so that a jump of the
// wall clock is noticed within it (timers count monotonic time).
const maxTimerWait = time.Minute

// retryBackoff spaces the retries of an entry the server refused to sign.
var retryBackoff = rotate.Backoff{Base: time.Second, Max: 5 * time.Minute}

// scheduler decides which entries are signed next: pending entries are
// signed as soon as a connection can take them; others wait in a heap for
// their rotation (or retry) time, and a timer moves them to pending then.
type scheduler struct {
	clk  clock.Clock
	wake chan struct{} // buffered 1: pending became non-empty
	kick chan struct{} // buffered 1: the earliest due time changed

	mu sync.Mutex // guards the fields below
	// pending entries in FIFO order; queue may hold IDs no longer in
	// pending, skipped by take.
	pending  map[string]struct{}
	queue    []string
	due      dueHeap
	dueByID  map[string]*dueItem
	failures map[string]int // consecutive signing failures by entry
}

type dueItem struct {
	id  string
	at  time.Time
	idx int
}

func newScheduler(clk clock.Clock) *scheduler {
	return &scheduler{
		clk:      clk,
		wake:     make(chan struct{}, 1),
		kick:     make(chan struct{}, 1),
		pending:  make(map[string]struct{}),
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

// enqueue makes ids pending now.
func (s *scheduler) enqueue(ids ...string) {
	if len(ids) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		s.enqueueLocked(id)
	}
	signal(s.wake)
}

func (s *scheduler) enqueueLocked(id string) {
	s.unscheduleLocked(id)
	if _, ok := s.pending[id]; ok {
		return
	}
	s.pending[id] = struct{}{}
	s.queue = append(s.queue, id)
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
	s.queue = nil
	s.due = nil
}

// take removes and returns up to n pending IDs, oldest first.
func (s *scheduler) take(n int) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	i := 0
	for ; i < len(s.queue) && len(out) < n; i++ {
		id := s.queue[i]
		if _, ok := s.pending[id]; ok {
			delete(s.pending, id)
			out = append(out, id)
		}
	}
	s.queue = s.queue[i:]
	if len(s.queue) == 0 {
		s.queue = nil
	}
	return out
}

// pendingCount returns how many entries are pending.
func (s *scheduler) pendingCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}

// compactLocked drops queue slots of IDs no longer pending when they
// outnumber the pending ones.
func (s *scheduler) compactLocked() {
	if len(s.queue) <= 2*len(s.pending)+64 {
		return
	}
	q := s.queue[:0]
	seen := make(map[string]struct{}, len(s.pending))
	for _, id := range s.queue {
		if _, ok := s.pending[id]; ok {
			if _, dup := seen[id]; !dup {
				seen[id] = struct{}{}
				q = append(q, id)
			}
		}
	}
	clear(s.queue[len(q):])
	s.queue = q
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

// requeue makes ids pending again at the front (a batch whose call
// failed).
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
		s.pending[id] = struct{}{}
		front = append(front, id)
	}
	s.queue = append(front, s.queue...)
	if len(s.pending) > 0 {
		signal(s.wake)
	}
}

func (s *scheduler) scheduleLocked(id string, at time.Time) {
	delete(s.pending, id)
	if d := s.dueByID[id]; d != nil {
		d.at = at
		heap.Fix(&s.due, d.idx)
	} else {
		d := &dueItem{id: id, at: at}
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
		for len(s.due) > 0 && !s.due[0].at.After(now) {
			d := heap.Pop(&s.due).(*dueItem)
			delete(s.dueByID, d.id)
			s.enqueueLocked(d.id)
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
