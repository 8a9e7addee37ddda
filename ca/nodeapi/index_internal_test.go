package nodeapi

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

var (
	parentA = spiffeid.RequireFromString("spiffe://example.org/writ/agent/a")
	parentB = spiffeid.RequireFromString("spiffe://example.org/writ/agent/b")
)

func newTestEntry(id string, parent spiffeid.ID, rev uint64) *entry.Entry {
	return &entry.Entry{ID: id, SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/w/" + id), ParentID: parent, Revision: rev}
}

func pendingIDs(s *subscriber) (bool, []string) {
	full, pending, _ := s.take()
	var ids []string
	for id := range pending {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return full, ids
}

// TestIndexApply: entry events update both maps and tell the streams of
// the old and new parent which IDs to look at; a slow stream only
// accumulates IDs.
func TestIndexApply(t *testing.T) {
	ix := newIndex(nil, spiffeid.RequireTrustDomainFromString("example.org"), clock.Real(), slog.New(slog.DiscardHandler))
	ix.loaded = true
	subA, subB := ix.subscribe(parentA), ix.subscribe(parentB)
	for _, s := range []*subscriber{subA, subB} {
		<-s.notify
		if full, _, _ := s.take(); !full {
			t.Fatal("new subscriber does not ask for the full set")
		}
	}
	ctx := context.Background()
	apply := func(evs ...datastore.Event) {
		t.Helper()
		if err := ix.apply(ctx, evs); err != nil {
			t.Fatal(err)
		}
	}
	apply(
		datastore.Event{Revision: 1, Kind: datastore.EventEntry, Key: "e1", Entry: newTestEntry("e1", parentA, 1)},
		datastore.Event{Revision: 2, Kind: datastore.EventEntry, Key: "e2", Entry: newTestEntry("e2", parentA, 2)},
	)
	if _, ids := pendingIDs(subA); !slices.Equal(ids, []string{"e1", "e2"}) {
		t.Errorf("a pending %v", ids)
	}
	if _, ids := pendingIDs(subB); len(ids) != 0 {
		t.Errorf("b pending %v", ids)
	}
	// Move e1 to b.
	apply(datastore.Event{Revision: 3, Kind: datastore.EventEntry, Key: "e1", Entry: newTestEntry("e1", parentB, 3)})
	_, idsA := pendingIDs(subA)
	_, idsB := pendingIDs(subB)
	if !slices.Equal(idsA, []string{"e1"}) || !slices.Equal(idsB, []string{"e1"}) {
		t.Errorf("after a move: a %v, b %v", idsA, idsB)
	}
	if ix.byParent[parentA]["e1"] != nil || ix.byParent[parentB]["e1"] == nil || ix.entries["e1"].ParentID != parentB {
		t.Error("move not applied")
	}
	// Delete e2: a's bucket goes.
	apply(datastore.Event{Revision: 4, Kind: datastore.EventEntry, Key: "e2"})
	if _, ok := ix.byParent[parentA]; ok || ix.entries["e2"] != nil {
		t.Error("delete not applied")
	}
	if ix.rev != 4 {
		t.Errorf("revision %d", ix.rev)
	}

	// Past maxPending a stream is sent the full set instead.
	var evs []datastore.Event
	for i := range maxPending + 1 {
		id := fmt.Sprintf("x%d", i)
		evs = append(evs, datastore.Event{Revision: uint64(5 + i), Kind: datastore.EventEntry, Key: id, Entry: newTestEntry(id, parentA, uint64(5+i))})
	}
	apply(evs...)
	if full, ids := pendingIDs(subA); !full || len(ids) != 0 {
		t.Errorf("after %d changes: full %v, %d pending", len(evs), full, len(ids))
	}
	ix.unsubscribe(subA)
	ix.unsubscribe(subB)
	if n := ix.subscribers(); n != 0 {
		t.Errorf("%d subscribers left", n)
	}
}

func TestBackoff(t *testing.T) {
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}
	for i, w := range want {
		if got := backoff(i + 1); got != w {
			t.Errorf("backoff(%d) = %v, want %v", i+1, got, w)
		}
	}
	if got := backoff(1000); got != retryMax {
		t.Errorf("backoff(1000) = %v", got)
	}
}
