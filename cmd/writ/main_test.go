package main

import (
	"context"
	"os"
	"testing"
)

// envRunCLI makes the test binary run the writ CLI on its arguments
// instead of the tests, so that a test can measure a real writ process.
const envRunCLI = "WRIT_TEST_RUN_CLI"

func TestMain(m *testing.M) {
	if os.Getenv(envRunCLI) == "1" {
		os.Exit(run(context.Background(), append([]string{"writ"}, os.Args[1:]...), os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}
