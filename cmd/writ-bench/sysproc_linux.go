package main

import "syscall"

// childAttr makes a child process die with the benchmark, even when the
// benchmark is killed.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
