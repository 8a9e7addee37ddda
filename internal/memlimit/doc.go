// Package memlimit keeps a process's soft memory limit (the Go runtime's
// GOMEMLIMIT) at a floor, or a fixed headroom above what the runtime
// still holds after a garbage collection, whichever is higher.
//
// A fixed limit trades CPU for memory: the collector works harder as the
// heap nears it. Once the live heap itself comes close to the limit (an
// agent holding many entries), the collector runs without pause and every
// request pays for it, the more the larger the heap. Keeping headroom above
// the live heap bounds how often it runs to once per Headroom bytes
// allocated, whatever the heap size, while a small process stays within
// the floor as before.
//
//	go memlimit.Run(ctx, memlimit.Config{Floor: 32 << 20, Headroom: 8 << 20})
//
// A fixed headroom costs the collector more the larger the live heap (it
// marks the whole heap once per Headroom bytes allocated). Config.Percent
// bounds that: the headroom is then at least that percentage of the live
// heap, as with GOGC, while a heap far above the floor is still not left
// to grow to twice its live size as GOGC=100 lets it.
//
// Caveats: the limit is process-wide, so only one Run should be active in
// a process, and it overrides GOMEMLIMIT (callers check it first). The
// limit is recomputed after each collection, not during one: a heap that
// grows by more than Headroom between two collections is collected at the
// old limit first.
package memlimit
