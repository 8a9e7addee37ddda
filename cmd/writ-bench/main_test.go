package main

import (
	"os"
	"testing"
)

// TestMain runs the child modes (the stub, the streams holder) when the
// tests start this test binary as a child, as the benchmark starts its
// own executable.
func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(runChild(mode))
	}
	os.Exit(m.Run())
}
