// Package clock is the source of time for every loop in Writ that waits:
// rotation, expiry, backoff and pruning take a Clock so that tests can step
// time instead of sleeping.
//
//	c := clock.Real()
//	t := c.NewTimer(time.Minute)
//	defer t.Stop()
//	select { case <-t.C(): ... case <-ctx.Done(): ... }
package clock

import (
	"sync"
	"time"
)

// Clock tells the time and makes timers.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer fires once on C after its duration.
type Timer interface {
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether it did.
	Stop() bool
	// Reset re-arms the timer to fire after d.
	Reset(d time.Duration) bool
}

// Real returns the system clock.
func Real() Clock { return realClock{} }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time        { return t.t.C }
func (t realTimer) Stop() bool                 { return t.t.Stop() }
func (t realTimer) Reset(d time.Duration) bool { return t.t.Reset(d) }

// AfterFunc calls f in its own goroutine once d has passed on c, as
// time.AfterFunc does on the system clock, unless stop is called first.
// stop reports whether it prevented the call; once it returns, f has
// returned or will never run, and the goroutine is gone.
func AfterFunc(c Clock, d time.Duration, f func()) (stop func() bool) {
	t := c.NewTimer(d)
	cancel := make(chan struct{})
	ran := make(chan bool, 1)
	go func() {
		select {
		case <-t.C():
			f()
			ran <- true
		case <-cancel:
			t.Stop()
			ran <- false
		}
	}()
	var once sync.Once
	var prevented bool
	return func() bool {
		once.Do(func() {
			close(cancel)
			prevented = !<-ran
		})
		return prevented
	}
}
