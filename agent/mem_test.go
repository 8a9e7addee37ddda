package agent_test

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"writ.dev/writ/agent/internal/fakenode"
	"writ.dev/writ/agent/svidcache"
	nodev1 "writ.dev/writ/ca/api/node/v1"
)

// TestMemoryPerEntry measures what a running agent holds per entry when
// it has far more entries than it keeps SVIDs for: 40,000 entries that
// arrive as the server sends changes (1,000 per message), of which it
// signs only the first --svid-cache-size. Its wire messages, parsed
// entries and signing queues all count, as they do in `writ agent run`:
//
//	go test -run TestMemoryPerEntry -v ./agent
func TestMemoryPerEntry(t *testing.T) {
	if testing.Short() {
		t.Skip("sends 40,000 entries")
	}
	const n, perMsg = 40000, 1000
	e := newEnv(t, fakenode.Options{})
	es := make([]*nodev1.Entry, n)
	for i := range es {
		es[i] = e.srv.Entry(fmt.Sprintf("/backlog/w%d", i), fmt.Sprintf("unix:uid:%d", 100000+i))
	}
	r := e.start(e.attestConfig())
	e.ready(r)
	// Stored after the first full Sync: the agent learns of them only
	// from the changes pushed below.
	e.srv.Store(es...)
	before := heapInUse()
	for i := 0; i < n; i += perMsg {
		e.srv.Push(&nodev1.SyncResponse{Entries: es[i:min(n, i+perMsg)]})
	}
	// Longer than eventually allows: with -race on a loaded machine,
	// 40,000 entries take a while.
	deadline := time.Now().Add(2 * time.Minute)
	for st := r.a.Cache().Stats(); st.Entries != n || st.X509SVIDs != svidcache.DefaultMaxX509SVIDs; st = r.a.Cache().Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("the agent holds %d entries and %d SVIDs, want %d and %d", st.Entries, st.X509SVIDs, n, svidcache.DefaultMaxX509SVIDs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	after := heapInUse()
	per := float64(after-before) / n
	t.Logf("agent heap for %d entries, %d with an X.509-SVID: %.1f MiB, %.0f bytes per entry", n, r.a.Cache().Stats().X509SVIDs, float64(after-before)/(1<<20), per)
	// 397 bytes measured (Go 1.26, amd64), the 1,000 SVIDs included
	// (about 35 bytes per entry here); 668 when the cache kept each
	// *entry.Entry and new entries waited in the pending map.
	if per > 480 {
		t.Errorf("%.0f bytes per entry; budget 480", per)
	}
	runtime.KeepAlive(es)
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
