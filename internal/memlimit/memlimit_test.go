package memlimit_test

import (
	"context"
	"errors"
	"math"
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"writ.dev/writ/internal/memlimit"
)

const mib = 1 << 20

func TestLimit(t *testing.T) {
	tests := []struct {
		name            string
		floor, headroom int64
		inUse           uint64
		want            int64
	}{
		{name: "small process stays at the floor", floor: 32 * mib, headroom: 8 * mib, inUse: 10 * mib, want: 32 * mib},
		{name: "floor exactly", floor: 32 * mib, headroom: 8 * mib, inUse: 24 * mib, want: 32 * mib},
		{name: "large heap keeps its headroom", floor: 32 * mib, headroom: 8 * mib, inUse: 40 * mib, want: 48 * mib},
		{name: "no overflow", floor: 32 * mib, headroom: 8 * mib, inUse: math.MaxUint64 - 1, want: math.MaxInt64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := memlimit.Limit(tt.floor, tt.headroom, tt.inUse); got != tt.want {
				t.Fatalf("Limit(%d, %d, %d) = %d, want %d", tt.floor, tt.headroom, tt.inUse, got, tt.want)
			}
		})
	}
}

func TestConfigLimitPercent(t *testing.T) {
	tests := []struct {
		name  string
		cfg   memlimit.Config
		inUse uint64
		want  int64
	}{
		{name: "no percent is Limit", cfg: memlimit.Config{Floor: 32 * mib, Headroom: 8 * mib}, inUse: 400 * mib, want: 408 * mib},
		{name: "small process stays at the floor", cfg: memlimit.Config{Floor: 64 * mib, Headroom: 16 * mib, Percent: 25}, inUse: 20 * mib, want: 64 * mib},
		{name: "headroom while larger than the percentage", cfg: memlimit.Config{Floor: 64 * mib, Headroom: 16 * mib, Percent: 25}, inUse: 60 * mib, want: 76 * mib},
		{name: "percentage of a large heap", cfg: memlimit.Config{Floor: 64 * mib, Headroom: 16 * mib, Percent: 25}, inUse: 400 * mib, want: 500 * mib},
		{name: "no overflow", cfg: memlimit.Config{Floor: 64 * mib, Headroom: 16 * mib, Percent: 25}, inUse: math.MaxUint64 - 1, want: math.MaxInt64},
		{name: "no overflow of a large percentage", cfg: memlimit.Config{Floor: 64 * mib, Headroom: 16 * mib, Percent: 1000}, inUse: math.MaxInt64 / 4, want: math.MaxInt64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.cfg.Limit(tt.inUse); got != tt.want {
				t.Fatalf("%+v.Limit(%d) = %d, want %d", tt.cfg, tt.inUse, got, tt.want)
			}
		})
	}
}

func TestRunRefusesBadConfig(t *testing.T) {
	for _, cfg := range []memlimit.Config{{Floor: 0, Headroom: mib}, {Floor: mib, Headroom: -1}, {Floor: mib, Headroom: mib, Percent: -1}} {
		if err := memlimit.Run(context.Background(), cfg); !errors.Is(err, memlimit.ErrConfig) {
			t.Errorf("Run(%+v) = %v, want ErrConfig", cfg, err)
		}
	}
}

// waitLimit collects garbage until the memory limit satisfies ok, or
// fails the test after a deadline.
func waitLimit(t *testing.T, what string, ok func(int64) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l := debug.SetMemoryLimit(-1)
		if ok(l) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("memory limit %d MiB: %s", l/mib, what)
		}
		runtime.GC()
		time.Sleep(time.Millisecond)
	}
}

// TestRunFollowsLiveHeap: the limit stays Headroom above what the heap
// holds after a collection as it grows past the floor and shrinks
// again, and the limit found is restored when Run ends. A fixed limit
// (the floor) fails it.
func TestRunFollowsLiveHeap(t *testing.T) {
	orig := debug.SetMemoryLimit(-1)
	const floor, headroom = 16 * mib, 8 * mib
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- memlimit.Run(ctx, memlimit.Config{Floor: floor, Headroom: headroom}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if l := debug.SetMemoryLimit(-1); l != orig {
			t.Errorf("limit after Run = %d, want the original %d", l, orig)
		}
	}()
	waitLimit(t, "want at least the floor", func(l int64) bool { return l >= floor && l < orig })

	// 64 MiB more live heap: the limit must follow it, Headroom above.
	live := make([][]byte, 64)
	for i := range live {
		live[i] = make([]byte, mib)
		live[i][0] = 1
	}
	waitLimit(t, "want 64 MiB of live heap plus the headroom", func(l int64) bool {
		return l >= 64*mib+headroom
	})
	runtime.KeepAlive(live)

	live = nil
	waitLimit(t, "want it back near the floor once the heap is freed", func(l int64) bool { return l < 48*mib })
}
