package clock_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/clock/fakeclock"
)

func TestAfterFunc(t *testing.T) {
	c := fakeclock.New(time.Unix(1e9, 0))
	called := make(chan struct{})
	stop := clock.AfterFunc(c, time.Minute, func() { close(called) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitForTimers(ctx, 1); err != nil {
		t.Fatal(err)
	}
	c.Advance(time.Minute - time.Nanosecond)
	select {
	case <-called:
		t.Fatal("called before its time")
	default:
	}
	c.Advance(time.Nanosecond)
	select {
	case <-called:
	case <-ctx.Done():
		t.Fatal("not called once its time came")
	}
	if stop() {
		t.Fatal("stop after the call reports that it prevented it")
	}

	var n atomic.Int32
	stop = clock.AfterFunc(c, time.Minute, func() { n.Add(1) })
	if !stop() || !stop() {
		t.Fatal("stop before the time does not report that it prevented the call")
	}
	if c.Timers() != 0 {
		t.Fatal("stopped, the timer is still armed")
	}
	c.Advance(time.Hour)
	if n.Load() != 0 {
		t.Fatal("called after stop")
	}
}
