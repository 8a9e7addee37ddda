package rotate

import (
	"math/rand/v2"
	"time"
)

// JitterDivisor bounds the per-SVID jitter: it is at most the lifetime
// divided by JitterDivisor.
const JitterDivisor = 10

// Lifetime returns notAfter-notBefore, or zero if that is negative.
func Lifetime(notBefore, notAfter time.Time) time.Duration {
	if life := notAfter.Sub(notBefore); life > 0 {
		return life
	}
	return 0
}

// MaxJitter returns the largest jitter for an SVID valid from notBefore
// to notAfter: a tenth of its lifetime.
func MaxJitter(notBefore, notAfter time.Time) time.Duration {
	return Lifetime(notBefore, notAfter) / JitterDivisor
}

// NewJitter returns a random jitter in [0, MaxJitter(notBefore, notAfter)].
// Callers choose it once per SVID and keep it, so that the SVID's rotation
// time does not move each time it is computed.
func NewJitter(notBefore, notAfter time.Time) time.Duration {
	max := MaxJitter(notBefore, notAfter)
	if max <= 0 {
		return 0
	}
	return rand.N(max + 1)
}

// Start returns the moment an SVID's lifetime is measured from: its
// NotBefore, or the time it was received if that is later. Servers
// backdate NotBefore against clock skew; measured from NotBefore, a
// short-lived SVID would look half spent the moment it arrives and be
// rotated again at once, in a loop.
func Start(notBefore, received time.Time) time.Time {
	if received.After(notBefore) {
		return received
	}
	return notBefore
}

// RotateAt returns when an SVID valid from notBefore to notAfter is due
// for rotation: notBefore + lifetime/2 - jitter, with jitter clamped to
// [0, lifetime/10]. An SVID without a positive lifetime is due at
// notBefore.
func RotateAt(notBefore, notAfter time.Time, jitter time.Duration) time.Time {
	life := Lifetime(notBefore, notAfter)
	if life == 0 {
		return notBefore
	}
	jitter = min(max(jitter, 0), life/JitterDivisor)
	return notBefore.Add(life/2 - jitter)
}

// ShouldRotate reports whether an SVID valid from notBefore to notAfter
// is due for rotation at now: now is at or after RotateAt(notBefore,
// notAfter, jitter). An expired SVID is always due.
func ShouldRotate(now, notBefore, notAfter time.Time, jitter time.Duration) bool {
	return !now.Before(RotateAt(notBefore, notAfter, jitter)) || !now.Before(notAfter)
}

// Backoff computes exponential backoff delays with full jitter: the
// delay before retry attempt n (from 0) is uniform in
// [0, min(Max, Base*2^n)).
type Backoff struct {
	Base time.Duration
	Max  time.Duration
}

// Ceiling returns min(Max, Base*2^attempt), the upper bound of the delay
// before retry attempt (attempt < 0 counts as 0).
func (b Backoff) Ceiling(attempt int) time.Duration {
	if b.Base <= 0 {
		return 0
	}
	attempt = max(attempt, 0)
	d := b.Base
	for i := 0; i < attempt && d < b.Max; i++ {
		d *= 2
	}
	if b.Max > 0 && d > b.Max {
		d = b.Max
	}
	return d
}

// Delay returns the delay before retry attempt, given r uniform in
// [0, 1) (r outside that range is clamped): r * Ceiling(attempt).
func (b Backoff) Delay(attempt int, r float64) time.Duration {
	r = min(max(r, 0), 1)
	return time.Duration(r * float64(b.Ceiling(attempt)))
}
