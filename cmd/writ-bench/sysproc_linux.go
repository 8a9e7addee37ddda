package main

import (
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// childAttr makes a child process die with the benchmark, even when the
// benchmark is killed.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// processCPU returns the CPU time the process has used so far, on all
// its threads.
func processCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts); err != nil {
		panic("writ-bench: no process CPU clock: " + err.Error()) // Linux always has one
	}
	return time.Duration(ts.Nano())
}
