package memlimit

import (
	"context"
	"errors"
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
)

// ErrConfig is returned by Run for a floor or headroom that is not
// positive, or a negative percentage.
var ErrConfig = errors.New("memlimit: floor and headroom must be positive, percent not negative")

// Config configures Run.
type Config struct {
	// Floor is the lowest limit, in bytes.
	Floor int64
	// Headroom is how far above the memory the runtime holds after a
	// collection the limit is set, in bytes.
	Headroom int64
	// Percent, if positive, raises the headroom to that percentage of
	// the memory the runtime holds after a collection when that is more
	// than Headroom: a large heap is then collected once per Percent %
	// of itself allocated (as GOGC does), not once per Headroom bytes,
	// which would cost the collector more the larger the heap.
	Percent int
}

// Limit returns the memory limit for a process whose Go runtime holds
// inUse bytes after a collection: inUse plus the larger of Headroom and
// Percent % of inUse, but at least Floor.
func (c Config) Limit(inUse uint64) int64 {
	headroom := max(c.Headroom, 0)
	if c.Percent > 0 {
		share := inUse / 100
		if share > math.MaxInt64/uint64(c.Percent) {
			return math.MaxInt64
		}
		headroom = max(headroom, int64(share*uint64(c.Percent)))
	}
	return Limit(c.Floor, headroom, inUse)
}

// Limit returns the memory limit for a process whose Go runtime holds
// inUse bytes after a collection: inUse+headroom, but at least floor.
func Limit(floor, headroom int64, inUse uint64) int64 {
	if inUse > math.MaxInt64-uint64(headroom) {
		return math.MaxInt64
	}
	return max(floor, int64(inUse)+headroom)
}

// The runtime/metrics read after each collection.
const (
	mTotal    = "/memory/classes/total:bytes"
	mReleased = "/memory/classes/heap/released:bytes"
	mFree     = "/memory/classes/heap/free:bytes"
	mObjects  = "/memory/classes/heap/objects:bytes"
	mLive     = "/gc/heap/live:bytes"
)

// InUse returns the memory the Go runtime counts against its limit,
// less the heap memory free for reuse and the dead objects the last
// collection found: after a collection, what the process needs.
func InUse() uint64 {
	s := []metrics.Sample{{Name: mTotal}, {Name: mReleased}, {Name: mFree}, {Name: mObjects}, {Name: mLive}}
	metrics.Read(s)
	v := func(i int) uint64 {
		if s[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return s[i].Value.Uint64()
	}
	total, released, free, objects, live := v(0), v(1), v(2), v(3), v(4)
	used := total - min(total, released+free)
	if objects > live {
		used -= min(used, objects-live)
	}
	return used
}

// Run sets the memory limit at once and after every garbage collection
// until ctx ends, then restores the limit it found. It returns ErrConfig
// for an invalid cfg, and nil when ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Floor <= 0 || cfg.Headroom <= 0 || cfg.Percent < 0 {
		return ErrConfig
	}
	prev := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(prev)
	collected := make(chan struct{}, 1)
	last := int64(-1)
	for {
		if l := cfg.Limit(InUse()); l != last {
			debug.SetMemoryLimit(l)
			last = l
		}
		armCollected(collected)
		select {
		case <-ctx.Done():
			return nil
		case <-collected:
		}
	}
}

// sentinel is an object nothing refers to: its cleanup runs after the
// next collection. It holds a pointer so that it is not a tiny
// allocation, which the runtime may keep alive with its neighbours.
type sentinel struct{ _ *int }

// armCollected signals ch, without blocking, after the next garbage
// collection.
func armCollected(ch chan<- struct{}) {
	runtime.AddCleanup(new(sentinel), func(ch chan<- struct{}) {
		select {
		case ch <- struct{}{}:
		default:
		}
	}, ch)
}
