//go:build unix

package jwtsvid_test

import (
	"time"

	"golang.org/x/sys/unix"
)

// processCPU returns the CPU time the process has used so far, on every
// thread (garbage collection included), or the wall clock where the
// system has no process CPU clock.
func processCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts); err != nil {
		return time.Duration(time.Now().UnixNano())
	}
	return time.Duration(ts.Nano())
}
