package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/protobuf/proto"

	"writ.dev/writ/agent"
	"writ.dev/writ/agent/internal/fakenode"
	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/workloadapi"
	"writ.dev/writ/workloadapi/unixattest"
)

// batchRecorder records the agent's signing calls at the fake server and
// can hold the first one until released.
type batchRecorder struct {
	batches chan []string
	hold    chan struct{}
	first   sync.Once
	release sync.Once
}

func newBatchRecorder(t *testing.T, hold bool) *batchRecorder {
	b := &batchRecorder{batches: make(chan []string, 4096), hold: make(chan struct{})}
	if !hold {
		close(b.hold)
	}
	return b
}

func (b *batchRecorder) onBatch(ids []string) {
	select {
	case b.batches <- ids:
	default:
	}
	b.first.Do(func() { <-b.hold })
}

func (b *batchRecorder) releaseFirst() { b.release.Do(func() { close(b.hold) }) }

func (b *batchRecorder) next(t *testing.T) []string {
	t.Helper()
	select {
	case ids := <-b.batches:
		return ids
	case <-time.After(30 * time.Second):
		t.Fatal("no signing call")
		return nil
	}
}

func manyEntries(srv *fakenode.Server, n int) []*nodev1.Entry {
	es := make([]*nodev1.Entry, n)
	for i := range es {
		es[i] = srv.Entry(fmt.Sprintf("/svc/%d", i), fmt.Sprintf("unix:uid:%d", 100000+i))
	}
	return es
}

func signedTotal(srv *fakenode.Server) int {
	n := 0
	for _, s := range srv.Stats().BatchSizes {
		n += s
	}
	return n
}

// TestNewEntrySignedBeforeBacklog: with 20,000 entries waiting to be
// signed (and room for all of them), an entry created meanwhile goes in
// the very next signing call, ahead of the backlog.
func TestNewEntrySignedBeforeBacklog(t *testing.T) {
	const n = 20000
	rec := newBatchRecorder(t, true)
	e := newEnv(t, fakenode.Options{OnBatch: rec.onBatch})
	t.Cleanup(rec.releaseFirst) // before the fake server stops
	e.srv.SetEntries(manyEntries(e.srv, n)...)
	cfg := e.attestConfig()
	cfg.MaxX509SVIDs = n + 1
	r := e.start(cfg)

	first := rec.next(t) // held until released
	if len(first) != agent.MaxBatch {
		t.Fatalf("first call signs %d entries, want a full batch of %d", len(first), agent.MaxBatch)
	}
	ne := e.srv.Entry("/new", "unix:uid:1")
	e.srv.Store(ne)
	e.srv.Push(&nodev1.SyncResponse{Entries: []*nodev1.Entry{ne}})
	// Logged once it is queued for signing.
	eventually(t, "the new entry queued", func() bool {
		return strings.Contains(e.logs.text(), "entries synced full=false to_sign=0 new=1 ")
	})
	rec.releaseFirst()

	second := rec.next(t)
	if len(second) == 0 || second[0] != ne.Id {
		t.Fatalf("the call after the new entry arrived does not start with it (%d entries)", len(second))
	}
	eventually(t, "the new entry's SVID", func() bool { return svidFor(r.a.Cache(), ne.Id, mustSels(t, "unix:uid:1")) != nil })
	if got := r.a.Cache().Stats().X509SVIDs; got >= n {
		t.Fatalf("the backlog (%d SVIDs) was signed before the new entry", got)
	}
}

// TestUnmatchedSVIDsBounded: with more entries than the cache keeps and
// no workload connected, the agent signs only as many as the bound, and
// the bound holds as entries come and change.
func TestUnmatchedSVIDsBounded(t *testing.T) {
	const n, bound = 3000, 100
	e := newEnv(t, fakenode.Options{})
	e.srv.SetEntries(manyEntries(e.srv, n)...)
	cfg := e.attestConfig()
	cfg.MaxX509SVIDs = bound
	r := e.start(cfg)
	e.ready(r)
	if got := signedTotal(e.srv); got != bound {
		t.Fatalf("%d entries signed at start, want %d (the bound)", got, bound)
	}
	if st := r.a.Cache().Stats(); st.X509SVIDs != bound || st.Entries != n {
		t.Fatalf("cache after start: %+v", st)
	}

	var added []*nodev1.Entry
	for i := range 50 {
		ne := e.srv.Entry(fmt.Sprintf("/new/%d", i), fmt.Sprintf("unix:uid:%d", 500+i))
		e.srv.Store(ne)
		added = append(added, ne)
	}
	e.srv.Push(&nodev1.SyncResponse{Entries: added})
	// The cache is full: new entries nobody asks for wait for a
	// workload. One that is changed after it was signed is re-signed
	// at once, and the bound holds.
	eventually(t, "the new entries in the cache", func() bool {
		for _, ne := range added {
			if _, ok := r.a.Cache().Entry(ne.Id); !ok {
				return false
			}
		}
		return true
	})
	var held *nodev1.Entry
	for _, w := range e.srv.Entries() {
		if _, ok := r.a.Cache().X509SVID(w.Id); ok {
			held = w
			break
		}
	}
	if held == nil {
		t.Fatal("no SVID held")
	}
	before, _ := r.a.Cache().X509SVID(held.Id)
	// A longer TTL: the entry keeps its SVID until the new one arrives,
	// so no room opens meanwhile.
	changed := proto.Clone(held).(*nodev1.Entry)
	changed.X509SvidTtl = 2 * held.GetX509SvidTtl()
	changed.Revision++
	e.srv.Store(changed)
	e.srv.Push(&nodev1.SyncResponse{Entries: []*nodev1.Entry{changed}})
	eventually(t, "the changed entry re-signed", func() bool { return e.srv.Signed(changed.Id) == 2 })
	eventually(t, "its new SVID in the cache", func() bool {
		s, ok := r.a.Cache().X509SVID(changed.Id)
		return ok && s.NotAfter.After(before.NotAfter)
	})
	if st := r.a.Cache().Stats(); st.X509SVIDs != bound || st.UnmatchedX509SVIDs != bound {
		t.Fatalf("cache after new entries: %+v, want %d SVIDs", st, bound)
	}
	for _, ne := range added {
		if e.srv.Signed(ne.Id) != 0 {
			t.Fatal("a new entry was signed with the cache full and no workload asking")
		}
	}
	if got := signedTotal(e.srv); got != bound+1 {
		t.Fatalf("%d SVIDs signed, want %d", got, bound+1)
	}
}

// TestWorkloadGetsUnsignedEntryOnFirstFetch: a workload whose entry was
// left unsigned (beyond the cache's bound) gets its SVID on its first
// fetch, which waits for the signature.
func TestWorkloadGetsUnsignedEntryOnFirstFetch(t *testing.T) {
	const n, bound = 2000, 10
	e := newEnv(t, fakenode.Options{})
	es := manyEntries(e.srv, n)
	mine := e.srv.Entry("/mine", fmt.Sprintf("unix:uid:%d", os.Getuid()))
	mine.Id = "ffffffff-ffff-4fff-bfff-ffffffffffff" // last in the Sync message
	e.srv.SetEntries(append(es, mine)...)
	cfg := e.attestConfig()
	cfg.MaxX509SVIDs = bound
	r := e.start(cfg)
	e.ready(r)
	if _, ok := r.a.Cache().X509SVID(mine.Id); ok || e.srv.Signed(mine.Id) != 0 {
		t.Fatal("the workload's entry was signed before any workload asked")
	}

	sockDir, err := os.MkdirTemp("", "wl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "api.sock")
	wl, err := workloadapi.New(workloadapi.Config{
		SocketPath:  sock,
		Cache:       r.a.Cache(),
		Attestor:    unixattest.New(unixattest.Config{}),
		TrustDomain: td,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	wlCtx, stopWL := context.WithCancel(context.Background())
	wlDone := make(chan error, 1)
	go func() { wlDone <- wl.Run(wlCtx) }()
	t.Cleanup(func() { stopWL(); <-wlDone })
	select {
	case <-wl.Ready():
	case err := <-wlDone:
		t.Fatalf("workload API: %v", err)
	}

	svid, err := spiffewl.FetchX509SVID(ctx, spiffewl.WithAddr("unix://"+sock))
	if err != nil {
		t.Fatalf("first fetch: %v", err)
	}
	if svid.ID.String() != "spiffe://example.org/mine" {
		t.Fatalf("got %s", svid.ID)
	}
	if got := e.srv.Signed(mine.Id); got != 1 {
		t.Fatalf("signed %d times", got)
	}
	if !slices.ContainsFunc(e.srv.Stats().BatchSizes, func(s int) bool { return s >= 1 }) {
		t.Fatal("no signing call")
	}
}
