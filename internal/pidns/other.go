//go:build !linux

package pidns

import (
	"os/exec"
	"testing"
)

// Enter skips the test: PID namespaces are Linux's.
func Enter(t *testing.T) bool {
	t.Helper()
	t.Skip("pidns: PID namespaces are Linux only")
	return false
}

// StartAt fails the test: PID namespaces are Linux's.
func StartAt(t testing.TB, _ *exec.Cmd, _ int) {
	t.Helper()
	t.Fatal("pidns: PID namespaces are Linux only")
}

// StartImpostor fails the test: PID namespaces are Linux's.
func StartImpostor(t testing.TB, pid int) *exec.Cmd {
	t.Helper()
	StartAt(t, nil, pid)
	return nil
}

// HoldIfAsked does nothing: PID namespaces are Linux's.
func HoldIfAsked() {}
