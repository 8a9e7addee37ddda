package agent_test

import (
	"os"
	"testing"

	"writ.dev/writ/internal/leakcheck"
)

// TestMain fails the run if the tests leave goroutines behind: Run must
// return only after everything it started has stopped.
func TestMain(m *testing.M) { os.Exit(leakcheck.Main(m)) }
