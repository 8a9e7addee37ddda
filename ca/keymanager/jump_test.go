package keymanager_test

import (
	"context"
	"testing"
	"time"

	"writ.dev/writ/ca/keymanager"
)

// runManager starts a manager on e and its Run loop, stopped at the end
// of the test.
func runManager(t *testing.T, e *env) *keymanager.Manager {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	m, err := keymanager.New(ctx, e.config())
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

// step lets d of time pass once the loop waits on its timer, then waits
// until it waits again (it has handled whatever fell due).
func (e *env) step(t *testing.T, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.clk.WaitForTimers(ctx, 1); err != nil {
		t.Fatal("rotation loop armed no timer")
	}
	e.clk.Advance(d)
	if err := e.clk.WaitForTimers(ctx, 1); err != nil {
		t.Fatal("rotation loop did not wait again")
	}
}

// TestClockJumpForward: after the wall clock steps a day forward, past
// the active keys' expiry, keys valid at the new time sign within two
// minutes of time passing, and the expired ones leave the bundle; the
// loop does not sleep out a wait computed before the step.
func TestClockJumpForward(t *testing.T) {
	e := newEnv(t)
	m := runManager(t, e)
	first := m.Active()
	e.step(t, time.Second)
	e.clk.Jump(24 * time.Hour)
	if now := e.clk.Now(); now.Before(first.X509.Cert.NotAfter) {
		t.Fatalf("the step does not pass the CA's expiry (%v, now %v)", first.X509.Cert.NotAfter, now)
	}
	for range 4 {
		e.step(t, 30*time.Second)
		now := e.clk.Now()
		a := m.Active()
		if now.Before(a.X509.Cert.NotBefore) || !now.Before(a.X509.Cert.NotAfter) || !now.Before(a.JWTNotAfter) {
			continue
		}
		b := e.bundle(t)
		if b.HasX509Authority(first.X509.Cert) || b.HasJWTAuthority(first.JWT.ID) {
			t.Fatal("expired keys still in the bundle")
		}
		if !b.HasX509Authority(a.X509.Cert) || !b.HasJWTAuthority(a.JWT.ID) {
			t.Fatal("the signing keys are not in the bundle")
		}
		return
	}
	t.Fatalf("two minutes after a step of a day, the CA signing is valid from %v to %v, and now is %v",
		m.Active().X509.Cert.NotBefore, m.Active().X509.Cert.NotAfter, e.clk.Now())
}

// TestClockJumpBackward: after the wall clock steps an hour back, the
// active keys, still valid, keep signing and nothing is rotated early;
// the successor is prepared once the wall clock reaches half the active
// key's lifetime, not an hour of waiting later.
func TestClockJumpBackward(t *testing.T) {
	e := newEnv(t)
	m := runManager(t, e)
	first := m.Active()
	life := first.X509.Cert.NotAfter.Sub(first.X509.Cert.NotBefore)
	prepareAt := first.X509.Cert.NotBefore.Add(life / 2)
	// Most of the way to half-life, time passing.
	e.step(t, prepareAt.Sub(e.clk.Now())-10*time.Minute)
	e.clk.Jump(-time.Hour)
	e.step(t, time.Minute)
	if a := m.Active(); a != first && !a.X509.Cert.Equal(first.X509.Cert) || len(e.bundle(t).X509Authorities()) != 1 {
		t.Fatal("a step back of the clock changed the keys")
	}
	// The wall clock reaches prepareAt 69 minutes later; the successor
	// is published within a minute of that.
	for e.clk.Now().Before(prepareAt.Add(time.Minute)) {
		if e.clk.Now().Before(prepareAt) && len(e.bundle(t).X509Authorities()) != 1 {
			t.Fatalf("successor prepared at %v, before half-life (%v)", e.clk.Now(), prepareAt)
		}
		e.step(t, 30*time.Second)
	}
	if n := len(e.bundle(t).X509Authorities()); n != 2 {
		t.Fatalf("a minute after half-life (by the wall clock), %d X.509 authorities, want 2", n)
	}
	if !m.Active().X509.Cert.Equal(first.X509.Cert) {
		t.Fatal("the successor signs before its time")
	}
}
