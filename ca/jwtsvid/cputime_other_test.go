//go:build !unix

package jwtsvid_test

import "time"

// processCPU returns the wall clock: this system has no process CPU
// clock that the benchmarks read.
func processCPU() time.Duration { return time.Duration(time.Now().UnixNano()) }
