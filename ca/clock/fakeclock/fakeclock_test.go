package fakeclock_test

import (
	"context"
	"testing"
	"time"

	"writ.dev/writ/ca/clock/fakeclock"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func fired(t *testing.T, ch <-chan time.Time) bool {
	t.Helper()
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestTimerFiresOnlyWhenDue(t *testing.T) {
	c := fakeclock.New(t0)
	tm := c.NewTimer(time.Minute)
	c.Advance(time.Minute - time.Nanosecond)
	if fired(t, tm.C()) {
		t.Fatal("fired early")
	}
	c.Advance(time.Nanosecond)
	if !fired(t, tm.C()) {
		t.Fatal("did not fire when due")
	}
	if c.Timers() != 0 {
		t.Fatal("fired timer still armed")
	}
}

func TestStopAndReset(t *testing.T) {
	c := fakeclock.New(t0)
	tm := c.NewTimer(time.Minute)
	if !tm.Stop() {
		t.Fatal("Stop of an armed timer returned false")
	}
	c.Advance(time.Hour)
	if fired(t, tm.C()) {
		t.Fatal("stopped timer fired")
	}
	tm.Reset(time.Second)
	c.Advance(time.Second)
	if !fired(t, tm.C()) {
		t.Fatal("reset timer did not fire")
	}
	if zero := c.NewTimer(0); !fired(t, zero.C()) {
		t.Fatal("zero-duration timer did not fire at once")
	}
}

func TestSetBackwardsFiresNothing(t *testing.T) {
	c := fakeclock.New(t0)
	tm := c.NewTimer(time.Minute)
	c.Set(t0.Add(-time.Hour))
	if fired(t, tm.C()) || c.Now() != t0.Add(-time.Hour) {
		t.Fatal("clock jump backwards fired a timer")
	}
}

func TestWaitForTimers(t *testing.T) {
	c := fakeclock.New(t0)
	go func() {
		time.Sleep(10 * time.Millisecond)
		c.NewTimer(time.Second)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.WaitForTimers(ctx, 1); err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	if err := c.WaitForTimers(ctx2, 2); err == nil {
		t.Fatal("WaitForTimers(2) returned with one timer armed")
	}
}

// TestWaitForTimerWithin: it returns only once a timer due within d is
// armed; a later timer does not count.
func TestWaitForTimerWithin(t *testing.T) {
	c := fakeclock.New(t0)
	c.NewTimer(time.Hour)
	// With a canceled context it still looks at the armed timers first.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.WaitForTimerWithin(ctx, time.Hour); err != nil {
		t.Fatalf("a timer due in an hour, waiting for one within an hour: %v", err)
	}
	if err := c.WaitForTimerWithin(ctx, time.Minute); err == nil {
		t.Fatal("returned with only a timer an hour away")
	}
	done := make(chan error, 1)
	go func() { done <- c.WaitForTimerWithin(context.Background(), time.Minute) }()
	c.NewTimer(time.Minute)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestJump: a step of the clock, either way, fires no timer and leaves
// each the time it had left.
func TestJump(t *testing.T) {
	for _, d := range []time.Duration{24 * time.Hour, -24 * time.Hour} {
		c := fakeclock.New(t0)
		tm := c.NewTimer(time.Minute)
		c.Jump(d)
		if c.Now() != t0.Add(d) {
			t.Fatalf("Jump(%v): Now = %v, want %v", d, c.Now(), t0.Add(d))
		}
		if fired(t, tm.C()) {
			t.Fatalf("Jump(%v) fired a timer", d)
		}
		c.Advance(time.Minute - time.Nanosecond)
		if fired(t, tm.C()) {
			t.Fatalf("after Jump(%v), a timer fired before its minute", d)
		}
		c.Advance(time.Nanosecond)
		if !fired(t, tm.C()) {
			t.Fatalf("after Jump(%v), a timer did not fire after its minute", d)
		}
	}
}
