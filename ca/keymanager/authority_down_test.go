package keymanager_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"writ.dev/writ/ca/keymanager"
)

var errDown = errors.New("upstream down")

// flakyAuthority is a self-signing authority that can be switched off,
// as an upstream CA that becomes unreachable.
type flakyAuthority struct {
	mu    sync.Mutex // guards down and calls
	down  bool
	calls int
}

func (f *flakyAuthority) MintCA(ctx context.Context, req keymanager.CARequest) (*keymanager.CA, error) {
	f.mu.Lock()
	f.calls++
	down := f.down
	f.mu.Unlock()
	if down {
		return nil, errDown
	}
	return keymanager.SelfSigned{}.MintCA(ctx, req)
}

func (f *flakyAuthority) set(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = down
}

func (f *flakyAuthority) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// TestAuthorityDown: while the authority fails, the current CA keeps
// signing; Run asks it again after 1, 2, 4… minutes; once it answers, the
// next CA is prepared. A restart while it is down keeps the current CA.
func TestAuthorityDown(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	auth := &flakyAuthority{}
	cfg := e.config()
	cfg.Authority = auth
	m, err := keymanager.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	first := m.Active()
	life := first.X509.Cert.NotAfter.Sub(first.X509.Cert.NotBefore)
	prepareAt := first.X509.Cert.NotBefore.Add(life / 2)

	// A restart past the half-life with the authority down keeps the CA.
	auth.set(true)
	e.clk.Set(prepareAt.Add(time.Second))
	m2, err := keymanager.New(ctx, cfg)
	if err != nil {
		t.Fatalf("restart with the authority down: %v", err)
	}
	if !m2.Active().X509.Cert.Equal(first.X509.Cert) {
		t.Fatal("restart changed the signing CA")
	}
	m = m2

	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	wait := func() {
		t.Helper()
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		defer wcancel()
		if err := e.clk.WaitForTimers(wctx, 1); err != nil {
			t.Fatal("rotation loop armed no timer")
		}
	}
	wait()
	calls := auth.count()
	for _, delay := range []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute} {
		e.clk.Advance(delay - time.Second)
		wait()
		if got := auth.count(); got != calls {
			t.Fatalf("authority asked again %s before the %s retry", time.Second, delay)
		}
		e.clk.Advance(time.Second)
		wait()
		if got := auth.count(); got != calls+1 {
			t.Fatalf("after %s: %d calls, want %d", delay, got, calls+1)
		}
		calls++
		if !m.Active().X509.Cert.Equal(first.X509.Cert) {
			t.Fatal("signing CA changed while the authority is down")
		}
	}
	if n := len(e.bundle(t).X509Authorities()); n != 1 {
		t.Fatalf("%d X.509 authorities while the authority is down, want 1", n)
	}
	// Back: the next retry (16 minutes) prepares the next CA.
	auth.set(false)
	e.clk.Advance(16 * time.Minute)
	wait()
	if n := len(e.bundle(t).X509Authorities()); n != 2 {
		t.Fatalf("%d X.509 authorities after the authority came back, want 2", n)
	}
}
