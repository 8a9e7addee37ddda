package jwtbatch_test

import (
	"os"
	"testing"

	"writ.dev/writ/internal/leakcheck"
)

// TestMain fails the run if a batch goroutine outlives the tests.
func TestMain(m *testing.M) { os.Exit(leakcheck.Main(m)) }
