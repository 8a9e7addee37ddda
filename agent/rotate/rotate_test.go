package rotate_test

import (
	"testing"
	"time"

	"writ.dev/writ/agent/rotate"
	"writ.dev/writ/ca/clock/fakeclock"
)

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func TestShouldRotate(t *testing.T) {
	life := time.Hour
	for _, c := range []struct {
		name   string
		jitter time.Duration
		due    time.Duration // offset from notBefore where rotation becomes due
	}{
		{"no jitter", 0, 30 * time.Minute},
		{"some jitter", 2 * time.Minute, 28 * time.Minute},
		{"max jitter", 6 * time.Minute, 24 * time.Minute},
		{"jitter above max is clamped", time.Hour, 24 * time.Minute},
		{"negative jitter is clamped", -time.Minute, 30 * time.Minute},
	} {
		t.Run(c.name, func(t *testing.T) {
			nb, na := t0, t0.Add(life)
			clk := fakeclock.New(nb)
			clk.Advance(c.due - time.Nanosecond)
			if rotate.ShouldRotate(clk.Now(), nb, na, c.jitter) {
				t.Fatalf("due at %v, before the threshold", clk.Now().Sub(nb))
			}
			clk.Advance(time.Nanosecond)
			if !rotate.ShouldRotate(clk.Now(), nb, na, c.jitter) {
				t.Fatalf("not due at %v, the threshold", clk.Now().Sub(nb))
			}
			if got := rotate.RotateAt(nb, na, c.jitter); !got.Equal(nb.Add(c.due)) {
				t.Fatalf("RotateAt = %v, want %v", got, nb.Add(c.due))
			}
		})
	}
}

func TestShouldRotateDegenerate(t *testing.T) {
	if !rotate.ShouldRotate(t0, t0, t0, 0) {
		t.Fatal("zero-lifetime SVID not due")
	}
	if !rotate.ShouldRotate(t0, t0.Add(time.Hour), t0, 0) {
		t.Fatal("inverted SVID not due")
	}
	if !rotate.ShouldRotate(t0.Add(2*time.Hour), t0, t0.Add(time.Hour), 0) {
		t.Fatal("expired SVID not due")
	}
}

func TestNewJitter(t *testing.T) {
	nb, na := t0, t0.Add(time.Hour)
	max := rotate.MaxJitter(nb, na)
	if max != 6*time.Minute {
		t.Fatalf("MaxJitter = %v", max)
	}
	seen := map[time.Duration]bool{}
	for range 1000 {
		j := rotate.NewJitter(nb, na)
		if j < 0 || j > max {
			t.Fatalf("jitter %v outside [0, %v]", j, max)
		}
		seen[j] = true
	}
	if len(seen) < 100 {
		t.Fatalf("only %d distinct jitters in 1000 draws", len(seen))
	}
	if j := rotate.NewJitter(nb, nb); j != 0 {
		t.Fatalf("jitter of zero-lifetime SVID = %v", j)
	}
}

func TestBackoff(t *testing.T) {
	b := rotate.Backoff{Base: 100 * time.Millisecond, Max: 30 * time.Second}
	for _, c := range []struct {
		name    string
		attempt int
		want    time.Duration
	}{
		{"first", 0, 100 * time.Millisecond},
		{"negative", -3, 100 * time.Millisecond},
		{"second", 1, 200 * time.Millisecond},
		{"eighth", 8, 25600 * time.Millisecond},
		{"capped", 9, 30 * time.Second},
		{"huge attempt stays capped", 1 << 30, 30 * time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := b.Ceiling(c.attempt); got != c.want {
				t.Fatalf("Ceiling(%d) = %v, want %v", c.attempt, got, c.want)
			}
			if got := b.Delay(c.attempt, 0); got != 0 {
				t.Fatalf("Delay(r=0) = %v", got)
			}
			if got := b.Delay(c.attempt, 0.5); got != c.want/2 {
				t.Fatalf("Delay(r=0.5) = %v, want %v", got, c.want/2)
			}
			if got := b.Delay(c.attempt, 7); got != c.want {
				t.Fatalf("Delay(r=7) = %v, want clamped %v", got, c.want)
			}
		})
	}
}

// TestBackdatedShortSVIDIsNotDueAtOnce: a server backdates NotBefore by
// 30s; an 8s SVID measured from NotBefore would be past half life on
// arrival and be re-signed in a loop.
func TestBackdatedShortSVIDIsNotDueAtOnce(t *testing.T) {
	received := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	notBefore, notAfter := received.Add(-30*time.Second), received.Add(8*time.Second)
	start := rotate.Start(notBefore, received)
	if !start.Equal(received) {
		t.Fatalf("Start = %v, want the receipt time", start)
	}
	for _, jitter := range []time.Duration{0, rotate.MaxJitter(start, notAfter)} {
		at := rotate.RotateAt(start, notAfter, jitter)
		if rotate.ShouldRotate(received, start, notAfter, jitter) {
			t.Fatalf("due on arrival (rotate at %v)", at)
		}
		if at.Before(received.Add(3*time.Second)) || !at.Before(notAfter) {
			t.Fatalf("rotate at %v: not within the second half of the 8s actually left", at.Sub(received))
		}
	}
	if got := rotate.Start(received, received.Add(-time.Hour)); !got.Equal(received) {
		t.Fatal("Start must not move before NotBefore")
	}
}
