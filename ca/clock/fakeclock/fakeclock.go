// Package fakeclock is a clock.Clock for tests. Time moves only when the
// test calls Advance or Set (time passing) or Jump (a step of the system
// time, which timers do not see). Because code under test arms its timers
// asynchronously, tests call WaitForTimers before advancing, so that the
// advance is not lost to a race.
package fakeclock

import (
	"context"
	"sync"
	"time"

	"writ.dev/writ/ca/clock"
)

// Clock is a manually driven clock.
type Clock struct {
	mu     sync.Mutex // guards now, timers
	now    time.Time
	timers []*timer
	armed  chan struct{} // closed and replaced whenever a timer is armed
}

// New returns a clock that reads now until moved.
func New(now time.Time) *Clock {
	return &Clock{now: now, armed: make(chan struct{})}
}

// Now returns the clock's current time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTimer returns a timer that fires when the clock reaches Now()+d.
func (c *Clock) NewTimer(d time.Duration) clock.Timer {
	t := &timer{c: c, ch: make(chan time.Time, 1)}
	t.Reset(d)
	return t
}

// Advance moves the clock forward by d and fires the timers that are due.
func (c *Clock) Advance(d time.Duration) { c.Set(c.Now().Add(d)) }

// Set moves the clock to now (forward or back) and fires the timers that
// are due.
func (c *Clock) Set(now time.Time) {
	c.mu.Lock()
	c.now = now
	kept := c.timers[:0]
	var due []*timer
	for _, t := range c.timers {
		if !t.when.After(now) {
			due = append(due, t)
		} else {
			kept = append(kept, t)
		}
	}
	c.timers = kept
	c.mu.Unlock()
	for _, t := range due {
		select {
		case t.ch <- now:
		default:
		}
	}
}

// Jump steps the clock by d, forward or back, as a change of the system
// time does (an NTP step, settimeofday, a resumed VM): Now moves, but
// armed timers keep the time they have left and none fires, since real
// timers count monotonic time, which such a step does not move. Code that
// slept a duration computed from Now before the step learns of it only
// when a timer fires and it reads Now again. Advance and Set, by contrast,
// are time passing.
func (c *Clock) Jump(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for _, t := range c.timers {
		t.when = t.when.Add(d)
	}
}

// Timers returns the number of armed timers.
func (c *Clock) Timers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// WaitForTimers blocks until at least n timers are armed or ctx ends.
func (c *Clock) WaitForTimers(ctx context.Context, n int) error {
	for {
		c.mu.Lock()
		count, armed := len(c.timers), c.armed
		c.mu.Unlock()
		if count >= n {
			return nil
		}
		select {
		case <-armed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// WaitForTimerWithin blocks until a timer is armed that fires at most d
// after the clock's current time, or ctx ends: the code under test is
// then waiting on it, and Advance(d) fires it.
func (c *Clock) WaitForTimerWithin(ctx context.Context, d time.Duration) error {
	for {
		c.mu.Lock()
		limit, armed := c.now.Add(d), c.armed
		found := false
		for _, t := range c.timers {
			if !t.when.After(limit) {
				found = true
				break
			}
		}
		c.mu.Unlock()
		if found {
			return nil
		}
		select {
		case <-armed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

type timer struct {
	c    *Clock
	ch   chan time.Time
	when time.Time // guarded by c.mu
}

func (t *timer) C() <-chan time.Time { return t.ch }

func (t *timer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	for i, x := range t.c.timers {
		if x == t {
			t.c.timers = append(t.c.timers[:i], t.c.timers[i+1:]...)
			return true
		}
	}
	return false
}

func (t *timer) Reset(d time.Duration) bool {
	active := t.Stop()
	c := t.c
	c.mu.Lock()
	t.when = c.now.Add(d)
	if d <= 0 {
		c.mu.Unlock()
		select {
		case t.ch <- t.when:
		default:
		}
		return active
	}
	c.timers = append(c.timers, t)
	close(c.armed)
	c.armed = make(chan struct{})
	c.mu.Unlock()
	return active
}
