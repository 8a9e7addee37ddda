package leakcheck

import (
	"bytes"
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// TestSettle: a goroutine that outlives the wait is reported with its
// stack; one that stops within it is not.
func TestSettle(t *testing.T) {
	before := runtime.NumGoroutine()
	stop := make(chan struct{})
	go func() { <-stop }()
	var out bytes.Buffer
	if err := settle(before, 50*time.Millisecond, &out); !errors.Is(err, errLeaked) {
		t.Fatalf("settle with a blocked goroutine: %v", err)
	}
	if !strings.Contains(out.String(), "leaked goroutines") || !strings.Contains(out.String(), "TestSettle") {
		t.Errorf("report lacks the count or the leaked goroutine's stack:\n%s", out.String())
	}

	go func() { time.Sleep(20 * time.Millisecond); close(stop) }()
	out.Reset()
	if err := settle(before, 5*time.Second, &out); err != nil {
		t.Fatalf("settle with goroutines that stop: %v\n%s", err, out.String())
	}
}
