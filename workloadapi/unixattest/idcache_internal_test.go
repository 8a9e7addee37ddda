//go:build linux

package unixattest

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/internal/peercred"
)

// TestSelectorsSharedByIdentity: a process's second connection (a second
// pin) reuses the selectors of the first, but a process with the same PID
// and another start time (a reused PID), a changed executable, or an
// entry older than nameTTL computes them afresh.
func TestSelectorsSharedByIdentity(t *testing.T) {
	clk := fakeclock.New(time.Now().Add(time.Hour)) // the test binary's ctime has settled
	a := New(Config{Clock: clk})
	cred := peercred.Cred{PID: int32(os.Getpid()), UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
	pin := func() *Process {
		t.Helper()
		p, err := a.Pin(cred)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	ctx := context.Background()
	first, err := pin().Selectors(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := a.computeCount.Load(); n != 1 {
		t.Fatalf("%d computations for the first connection", n)
	}
	second, err := pin().Selectors(ctx)
	if err != nil || !slices.Equal(first, second) {
		t.Fatalf("second connection: %v, %v (first %v)", second, err, first)
	}
	if n := a.computeCount.Load(); n != 1 {
		t.Fatalf("the second connection of the same process computed its selectors again (%d computations)", n)
	}

	reused := pin()
	reused.start++ // as a process that reused the PID would be
	if _, err := reused.Selectors(ctx); err != nil {
		t.Fatal(err)
	}
	if n := a.computeCount.Load(); n != 2 {
		t.Fatalf("a process with another start time used cached selectors (%d computations)", n)
	}

	p := pin()
	id := p.identity()
	exe, ok := p.exeKey()
	if !ok {
		t.Fatal("no executable key")
	}
	changed := exe
	changed.mtime++
	if _, ok := a.identities.get(id, changed, clk.Now()); ok {
		t.Error("cached selectors used for an executable whose content key changed")
	}

	if _, err := pin().Selectors(ctx); err != nil { // the mismatch dropped the entry
		t.Fatal(err)
	}
	if n := a.computeCount.Load(); n != 3 {
		t.Fatalf("%d computations after the entry was dropped, want 3", n)
	}
	clk.Advance(nameTTL)
	if _, err := pin().Selectors(ctx); err != nil {
		t.Fatal(err)
	}
	if n := a.computeCount.Load(); n != 4 {
		t.Fatalf("selectors older than nameTTL were used (%d computations)", n)
	}
}
