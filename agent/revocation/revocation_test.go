package revocation_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"writ.dev/writ/agent/revocation"
	"writ.dev/writ/ca/clock/fakeclock"
)

var t0 = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)

const web = "spiffe://example.org/web"

func keys(rs []revocation.Revocation) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Key())
	}
	return out
}

func TestRevoked(t *testing.T) {
	l := revocation.New(fakeclock.New(t0))
	l.Add([]revocation.Revocation{
		{JTI: "t1", RevokedAt: t0, ExpiresAt: t0.Add(time.Minute)},
		{ClientID: web, RevokedAt: t0, ExpiresAt: t0.Add(time.Hour)},
	})
	tests := []struct {
		name               string
		jti, sub, clientID string
		iat                time.Time
		want               bool
	}{
		{name: "revoked jti", jti: "t1", sub: "spiffe://example.org/db", want: true},
		{name: "other jti", jti: "t2", sub: "spiffe://example.org/db"},
		{name: "client by client_id, issued before", jti: "t2", clientID: web, iat: t0.Add(-time.Second), want: true},
		{name: "client by client_id, issued at", jti: "t2", clientID: web, iat: t0, want: true},
		{name: "client by client_id, issued after", jti: "t2", clientID: web, iat: t0.Add(time.Second)},
		{name: "client by sub, issued before", jti: "t2", sub: web, iat: t0.Add(-time.Second), want: true},
		{name: "client by sub, issued after", jti: "t2", sub: web, iat: t0.Add(time.Second)},
		{name: "client, no iat", sub: web, want: true},
		{name: "nothing", iat: t0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := l.Revoked(tc.jti, tc.sub, tc.clientID, tc.iat); got != tc.want {
				t.Errorf("Revoked = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	long := string(make([]byte, revocation.MaxJTILen+1))
	for _, r := range []revocation.Revocation{
		{ExpiresAt: t0},
		{JTI: "a", ClientID: web, ExpiresAt: t0},
		{JTI: "a"},
		{JTI: long, ExpiresAt: t0},
		{ClientID: "spiffe://example.org/../x", ExpiresAt: t0},
		{ClientID: "web", ExpiresAt: t0},
	} {
		if err := r.Check(); !errors.Is(err, revocation.ErrInvalid) {
			t.Errorf("%+v: %v", r, err)
		}
	}
	r, err := revocation.FromUnix("", web, t0.Unix(), t0.Add(time.Hour).Unix())
	if err != nil || !r.RevokedAt.Equal(t0) || r.UnixExpiresAt() != t0.Add(time.Hour).Unix() {
		t.Errorf("FromUnix: %+v, %v", r, err)
	}
	frac := revocation.Revocation{JTI: "a", RevokedAt: t0.Add(500 * time.Millisecond), ExpiresAt: t0.Add(500 * time.Millisecond)}
	if frac.UnixRevokedAt() != t0.Unix() || frac.UnixExpiresAt() != t0.Unix()+1 {
		t.Errorf("rounding: %d, %d", frac.UnixRevokedAt(), frac.UnixExpiresAt())
	}
}

// TestChanges: a follower gets the full list first, then only what was
// added or changed, and the full list again when a revocation vanished
// before its expiry.
func TestChanges(t *testing.T) {
	clk := fakeclock.New(t0)
	l := revocation.New(clk)
	sub := l.Subscribe()
	defer sub.Close()
	a := revocation.Revocation{JTI: "a", RevokedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	b := revocation.Revocation{ClientID: web, RevokedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	if !l.Add([]revocation.Revocation{a}) {
		t.Fatal("Add: no change")
	}
	select {
	case <-sub.C():
	default:
		t.Fatal("no signal after Add")
	}
	rs, cur, full := l.Changes(revocation.Cursor{})
	if !full || !slices.Equal(keys(rs), []string{"jti:a"}) {
		t.Fatalf("first: %v, %v", full, rs)
	}
	if l.Add([]revocation.Revocation{a}) {
		t.Error("adding the same revocation changed the list")
	}
	if !l.Replace([]revocation.Revocation{a, b}) {
		t.Fatal("Replace: no change")
	}
	rs, cur, full = l.Changes(cur)
	if full || !slices.Equal(keys(rs), []string{"client:" + web}) {
		t.Fatalf("after Replace adding b: %v, %v", full, rs)
	}
	b2 := b
	b2.RevokedAt = t0.Add(time.Minute)
	l.Add([]revocation.Revocation{b2})
	rs, cur, full = l.Changes(cur)
	if full || len(rs) != 1 || !rs[0].RevokedAt.Equal(b2.RevokedAt) {
		t.Fatalf("after revoking b again: %v, %v", full, rs)
	}
	if rs, _, _ := l.Changes(cur); len(rs) != 0 {
		t.Fatalf("no change: %v", rs)
	}
	// Dropping a before it expires: followers need the full list.
	l.Replace([]revocation.Revocation{b2})
	rs, _, full = l.Changes(cur)
	if !full || !slices.Equal(keys(rs), []string{"client:" + web}) {
		t.Fatalf("after Replace dropping a: %v, %v", full, rs)
	}
	if l.Revoked("a", "", "", t0) {
		t.Error("a is still revoked")
	}
	// Expired and invalid revocations are not added.
	if l.Add([]revocation.Revocation{{JTI: "old", ExpiresAt: t0.Add(-revocation.Grace)}, {JTI: "x", ClientID: web, ExpiresAt: t0.Add(time.Hour)}}) {
		t.Error("an expired or invalid revocation was added")
	}
}

// TestRunDropsExpired: a revocation stays until ExpiresAt plus Grace,
// then Run drops it.
func TestRunDropsExpired(t *testing.T) {
	clk := fakeclock.New(t0)
	l := revocation.New(clk)
	l.Add([]revocation.Revocation{
		{JTI: "short", RevokedAt: t0, ExpiresAt: t0.Add(time.Minute)},
		{JTI: "long", RevokedAt: t0, ExpiresAt: t0.Add(time.Hour)},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- l.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := clk.WaitForTimerWithin(wctx, time.Minute+revocation.Grace); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Minute + revocation.Grace - time.Second)
	if !l.Revoked("short", "", "", t0) || l.Len() != 2 {
		t.Fatal("dropped before ExpiresAt+Grace")
	}
	// Run's timer waits at most a minute: it may have fired and been
	// armed again.
	if err := clk.WaitForTimerWithin(wctx, time.Second); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for l.Len() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("expired revocation not dropped")
		}
		time.Sleep(time.Millisecond)
	}
	if l.Revoked("short", "", "", t0) || !l.Revoked("long", "", "", t0) {
		t.Error("wrong revocation dropped")
	}
	if got := keys(l.Snapshot()); !slices.Equal(got, []string{"jti:long"}) {
		t.Errorf("Snapshot %v", got)
	}
}

// TestRunDropsExpiredAfterClockStep: when the wall clock steps past a
// revocation's end (an NTP step, a resumed VM), Run drops it within a
// minute, not when a timer armed for the time left before the step
// fires (an hour later here).
func TestRunDropsExpiredAfterClockStep(t *testing.T) {
	clk := fakeclock.New(t0)
	l := revocation.New(clk)
	l.Add([]revocation.Revocation{
		{JTI: "hour", RevokedAt: t0, ExpiresAt: t0.Add(time.Hour)},
		{JTI: "day", RevokedAt: t0, ExpiresAt: t0.Add(24 * time.Hour)},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- l.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := clk.WaitForTimers(wctx, 1); err != nil {
		t.Fatal(err)
	}
	clk.Jump(2 * time.Hour)
	if l.Len() != 2 {
		t.Fatal("a revocation dropped by the step alone")
	}
	clk.Advance(time.Minute)
	deadline := time.Now().Add(10 * time.Second)
	for l.Len() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("a minute after the clock stepped past its end, the revocation is still held (%d held)", l.Len())
		}
		time.Sleep(time.Millisecond)
	}
	if l.Revoked("hour", "", "", t0) || !l.Revoked("day", "", "", t0) {
		t.Error("wrong revocation dropped")
	}
}
