// Package leakcheck fails a test binary whose tests leave goroutines
// running: the one check every service package's TestMain uses.
//
//	func TestMain(m *testing.M) { os.Exit(leakcheck.Main(m)) }
//
// After the tests pass, Main waits up to Wait for the number of goroutines
// to fall back to what it was before them (goroutines that are stopping
// need a moment), then prints every goroutine's stack and returns 1 if it
// has not. Fuzzing is not checked: the fuzzing engine keeps goroutines of
// its own. The count is of the whole process, so the check catches any
// leak, but not which test caused it: the stacks tell.
package leakcheck
