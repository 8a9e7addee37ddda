//go:build linux

package unixattest_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"golang.org/x/sys/unix"

	"writ.dev/writ/internal/pidns"
	"writ.dev/writ/workloadapi/unixattest"
)

// TestReusedPID: once the process that connected has exited and another
// process has taken its PID, with the same uid, gid and executable inode
// (so that nothing but the pin tells them apart), Check and Selectors
// refuse; and PinConn, which takes the pidfd from the socket, does not
// pin the newcomer in the first place. The PID is reused for certain, in
// a PID namespace of the test's own.
func TestReusedPID(t *testing.T) {
	if !pidns.Enter(t) {
		return
	}
	for _, pn := range pinners {
		t.Run(pn.name, func(t *testing.T) {
			for _, before := range []bool{false, true} {
				t.Run(fmt.Sprintf("selectors before exit %v", before), func(t *testing.T) {
					c := startChild(t, selfExe(t), nil)
					a := pn.new(unixattest.Config{Logger: testLogger(t)})
					p := mustPin(t, pn, a, c)
					if before {
						if _, err := p.Selectors(context.Background()); err != nil {
							t.Fatal(err)
						}
					}
					c.exit(t)
					c.wait(t)
					pid := int(c.cred.PID)
					pidns.StartImpostor(t, pid)
					pidns.RequireLookalike(t, pid, c.cred.UID, c.cred.GID, c.path)

					if err := p.Check(); !errors.Is(err, unixattest.ErrProcessChanged) {
						t.Errorf("Check after the PID was reused = %v, want ErrProcessChanged", err)
					}
					if sel, err := p.Selectors(context.Background()); !errors.Is(err, unixattest.ErrProcessChanged) || sel != nil {
						t.Errorf("Selectors after the PID was reused = %v, %v; want ErrProcessChanged", sel, err)
					}
					// The socket's pidfd (Linux 6.5) names the process that
					// connected, not the number.
					if pn.name == "PinConn" && peerPidfd(t) {
						if p2, err := a.PinConn(c.conn); !errors.Is(err, unixattest.ErrProcessChanged) {
							t.Errorf("PinConn of a connection whose PID was reused = %v, %v; want ErrProcessChanged", p2, err)
						}
					}
				})
			}
		})
	}
}

// peerPidfd reports whether the kernel has SO_PEERPIDFD.
func peerPidfd(t *testing.T) bool {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	pidfd, err := unix.GetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_PEERPIDFD)
	if err != nil {
		t.Logf("SO_PEERPIDFD: %v", err)
		return false
	}
	unix.Close(pidfd)
	return true
}
