package main

import (
	"context"
	"os"

	"writ.dev/writ/internal/memlimit"
)

// serverMemory sets the server's soft memory limit (the Go runtime's
// GOMEMLIMIT) unless the environment sets one: at least Floor, and above
// what the server still holds after a garbage collection by the larger of
// Headroom and Percent % of it (memlimit.Run). With the runtime's default
// GOGC of 100 alone, the heap grows to twice what is live before it is
// collected, so that every connected agent's buffers and state cost the
// server twice their size in memory. A quarter keeps that overhead small
// while the collector still runs only once per quarter of the live heap
// allocated: its CPU cost per signature stays bounded however many agents
// are connected, which a fixed headroom would not.
var serverMemory = memlimit.Config{Floor: 64 << 20, Headroom: 16 << 20, Percent: 25}

// runServerMemoryLimit starts keeping the memory limit, unless GOMEMLIMIT
// is set, and returns the function that stops it.
func runServerMemoryLimit(ctx context.Context) (stop func()) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The configuration is constant and valid: Run only returns
		// when ctx ends.
		_ = memlimit.Run(ctx, serverMemory)
	}()
	return func() {
		cancel()
		<-done
	}
}
