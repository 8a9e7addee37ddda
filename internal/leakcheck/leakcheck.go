package leakcheck

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"testing"
	"time"
)

// Wait is how long Main waits for goroutines to stop after the tests.
const Wait = 5 * time.Second

// poll is how often Main counts the goroutines while it waits.
const poll = 20 * time.Millisecond

// Main runs the tests and returns the exit code for os.Exit: m.Run's, or
// 1 if they passed but left goroutines running.
func Main(m *testing.M) int {
	before := runtime.NumGoroutine()
	code := m.Run()
	if code != 0 || fuzzing() {
		return code
	}
	if err := settle(before, Wait, os.Stderr); err != nil {
		return 1
	}
	return 0
}

// fuzzing reports whether the binary runs a fuzz target.
func fuzzing() bool {
	f := flag.Lookup("test.fuzz")
	return f != nil && f.Value.String() != ""
}

// errLeaked: goroutines were still running after the wait.
var errLeaked = fmt.Errorf("leakcheck: goroutines leaked")

// settle waits until at most before goroutines run, for at most wait,
// polling; if more still run, it writes their stacks to w and returns
// errLeaked.
func settle(before int, wait time.Duration, w io.Writer) error {
	deadline := time.Now().Add(wait)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(poll)
	}
	n := runtime.NumGoroutine()
	if n <= before {
		return nil
	}
	buf := make([]byte, 1<<20)
	fmt.Fprintf(w, "leaked goroutines: %d before the tests, %d after\n%s\n", before, n, buf[:runtime.Stack(buf, true)])
	return errLeaked
}
