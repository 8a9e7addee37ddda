// Package rotate decides when SVIDs are renewed and how long to back off
// between reconnection attempts. It is pure: it does no I/O, reads no
// clock and logs nothing; callers pass the current time and arm timers
// from their own clock.Clock.
//
// An SVID valid from notBefore to notAfter is renewed at half its
// lifetime minus a jitter chosen once per SVID in [0, lifetime/10], so
// that SVIDs issued together are not all renewed at the same instant:
//
//	jitter := rotate.NewJitter(svid.NotBefore, svid.NotAfter) // once, kept with the SVID
//	at := rotate.RotateAt(svid.NotBefore, svid.NotAfter, jitter)
//	timer := clk.NewTimer(at.Sub(clk.Now()))
//	...
//	if rotate.ShouldRotate(clk.Now(), svid.NotBefore, svid.NotAfter, jitter) { renew() }
//
// Reconnection uses exponential backoff with full jitter:
//
//	b := rotate.Backoff{Base: 100 * time.Millisecond, Max: 30 * time.Second}
//	wait := b.Delay(attempt, rand.Float64())
//
// Caveats: a certificate with no positive lifetime (notAfter not after
// notBefore) is always due. Jitter outside [0, lifetime/10] is clamped.
package rotate
