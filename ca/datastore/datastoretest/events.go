package datastoretest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

// wantEvent is an expected event; Entry is compared only for entry events.
type wantEvent struct {
	kind  datastore.EventKind
	key   string
	entry *entry.Entry
}

func testEvents(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	ctx := t.Context()
	var want []wantEvent
	entryEvent := func(e *entry.Entry) { want = append(want, wantEvent{datastore.EventEntry, e.ID, e}) }

	// Entries, including operations that fail and must log nothing.
	entries := create(t, s,
		newEntry(t, "/w/a", "/agent/1", "unix:uid:1"),
		newEntry(t, "/w/b", "/agent/1", "unix:uid:2"))
	entryEvent(entries[0])
	entryEvent(entries[1])
	res, err := s.CreateEntries(ctx, []*entry.Entry{newEntry(t, "/w/a", "/agent/1", "unix:uid:1")})
	requireNoError(t, "CreateEntries", err)
	requireErrorIs(t, "CreateEntries of a duplicate", res[0].Err, datastore.ErrAlreadyExists)
	upd := entries[0].Clone()
	upd.DNSNames = []string{"new.example.org"}
	upd.FederatesWith = nil
	updated, err := replace(ctx, s, upd)
	requireNoError(t, "UpdateEntry", err)
	entryEvent(updated)
	_, err = s.DeleteEntry(ctx, entries[1].ID)
	requireNoError(t, "DeleteEntry", err)
	want = append(want, wantEvent{datastore.EventEntry, entries[1].ID, nil})
	_, err = s.DeleteEntry(ctx, entries[1].ID)
	requireErrorIs(t, "DeleteEntry again", err, datastore.ErrNotFound)

	// Agents.
	agent := newAgent("/agent/1")
	requireNoError(t, "CreateAgent", s.CreateAgent(ctx, agent))
	requireErrorIs(t, "CreateAgent again", s.CreateAgent(ctx, agent), datastore.ErrAlreadyExists)
	_, err = s.UpdateAgent(ctx, agent.SPIFFEID, func(a *datastore.Agent) error { a.Banned = true; return nil })
	requireNoError(t, "UpdateAgent", err)
	_, err = s.DeleteAgent(ctx, agent.SPIFFEID)
	requireNoError(t, "DeleteAgent", err)
	for range 3 {
		want = append(want, wantEvent{datastore.EventAgent, agent.SPIFFEID.String(), nil})
	}

	// Join tokens and CA keys are not logged.
	requireNoError(t, "CreateJoinToken", s.CreateJoinToken(ctx, &datastore.JoinToken{
		Hash: "h", SPIFFEID: id("/agent/2"), ExpiresAt: t0.Add(time.Hour), CreatedAt: t0,
	}))
	_, err = s.ConsumeJoinToken(ctx, "h", t0)
	requireNoError(t, "ConsumeJoinToken", err)
	requireNoError(t, "PutCAKey", s.PutCAKey(ctx, &datastore.CAKey{ID: "k", Kind: datastore.CAKeyJWT, State: datastore.CAKeyActive}))
	requireNoError(t, "DeleteCAKey", s.DeleteCAKey(ctx, "k"))

	// Bundles.
	b := newBundle(t, td)
	_, err = s.UpdateBundle(ctx, td, func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error) { return b, nil })
	requireNoError(t, "UpdateBundle", err)
	_, err = s.UpdateBundle(ctx, td, func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error) { return nil, errTest })
	requireErrorIs(t, "UpdateBundle with failing fn", err, errTest)
	requireNoError(t, "DeleteBundle", s.DeleteBundle(ctx, td))
	want = append(want,
		wantEvent{datastore.EventBundle, td.Name(), nil},
		wantEvent{datastore.EventBundle, td.Name(), nil})

	// And one more entry after all that.
	last := create(t, s, newEntry(t, "/w/c", "/agent/1", "unix:uid:3"))[0]
	entryEvent(last)

	all := allEvents(t, s, 0)
	if len(all) != len(want) {
		for _, ev := range all {
			t.Logf("event %+v", ev)
		}
		t.Fatalf("got %d events, want %d", len(all), len(want))
	}
	var prev uint64
	for i, ev := range all {
		w := want[i]
		if ev.Kind != w.kind || ev.Key != w.key {
			t.Errorf("event %d: got kind %d key %q, want kind %d key %q", i, ev.Kind, ev.Key, w.kind, w.key)
		}
		if ev.Revision <= prev {
			t.Errorf("event %d: revision %d does not grow (previous %d)", i, ev.Revision, prev)
		}
		prev = ev.Revision
		if w.kind != datastore.EventEntry {
			if ev.Entry != nil {
				t.Errorf("event %d: a non-entry event carries entry %+v", i, ev.Entry)
			}
			continue
		}
		requireEntry(t, fmt.Sprintf("event %d entry", i), w.entry, ev.Entry)
		if w.entry != nil && ev.Entry.Revision != ev.Revision {
			t.Errorf("event %d: entry revision %d differs from the event's, %d", i, ev.Entry.Revision, ev.Revision)
		}
	}
	if snap := latestRevision(t, s); snap != prev {
		t.Errorf("snapshot revision %d, want the last event's, %d", snap, prev)
	}

	// after and limit.
	for i := range all {
		got, err := s.Events(ctx, all[i].Revision, 2)
		requireNoError(t, "Events", err)
		wantRevs := revisions(all[i+1 : min(i+3, len(all))])
		if gotRevs := revisions(got); fmt.Sprint(gotRevs) != fmt.Sprint(wantRevs) {
			t.Errorf("Events(%d, 2): got revisions %v, want %v", all[i].Revision, gotRevs, wantRevs)
		}
	}
	got, err := s.Events(ctx, 0, 1)
	requireNoError(t, "Events", err)
	if len(got) != 1 || got[0].Revision != all[0].Revision {
		t.Errorf("Events(0, 1): got revisions %v, want [%d]", revisions(got), all[0].Revision)
	}
	got, err = s.Events(ctx, all[len(all)-1].Revision, 10)
	requireNoError(t, "Events after the latest", err)
	if len(got) != 0 {
		t.Errorf("Events after the latest revision: got %v", revisions(got))
	}
}

func revisions(evs []datastore.Event) []uint64 {
	out := make([]uint64, len(evs))
	for i, ev := range evs {
		out[i] = ev.Revision
	}
	return out
}

func testEventsPruned(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	pruner, ok := s.(EventPruner)
	if !ok {
		t.Skipf("%T does not implement EventPruner", s)
	}
	for i := range 10 {
		create(t, s, newEntry(t, fmt.Sprintf("/w/%d", i), "/agent/1", "unix:uid:1"))
	}
	all := allEvents(t, s, 0)
	if len(all) != 10 {
		t.Fatalf("got %d events, want 10", len(all))
	}
	requireNoError(t, "PruneEvents", pruner.PruneEvents(t.Context(), 3))

	for _, after := range []uint64{0, all[0].Revision, all[5].Revision} {
		_, err := s.Events(t.Context(), after, 100)
		requireErrorIs(t, fmt.Sprintf("Events(%d) of pruned history", after), err, datastore.ErrEventsPruned)
	}
	got, err := s.Events(t.Context(), all[6].Revision, 100)
	requireNoError(t, "Events of kept history", err)
	if fmt.Sprint(revisions(got)) != fmt.Sprint(revisions(all[7:])) {
		t.Errorf("Events(%d): got revisions %v, want %v", all[6].Revision, revisions(got), revisions(all[7:]))
	}
	// Pruning drops events, never entries: a snapshot has them all and
	// events follow on from it.
	snap, err := s.Snapshot(t.Context())
	requireNoError(t, "Snapshot", err)
	if len(snap.Entries) != 10 {
		t.Errorf("snapshot after pruning has %d entries, want 10", len(snap.Entries))
	}
	got, err = s.Events(t.Context(), snap.Revision, 100)
	requireNoError(t, "Events after the snapshot", err)
	if len(got) != 0 {
		t.Errorf("Events after the snapshot: %v", revisions(got))
	}
	e := create(t, s, newEntry(t, "/w/new", "/agent/1", "unix:uid:1"))[0]
	got, err = s.Events(t.Context(), snap.Revision, 100)
	requireNoError(t, "Events after the snapshot", err)
	if len(got) != 1 || got[0].Key != e.ID {
		t.Errorf("Events after the snapshot: got %+v, want the new entry's", got)
	}
}

func testSnapshot(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	ctx := t.Context()

	empty, err := s.Snapshot(ctx)
	requireNoError(t, "Snapshot", err)
	if len(empty.Entries) != 0 {
		t.Fatalf("new store's snapshot has entries: %+v", empty.Entries)
	}
	evs, err := s.Events(ctx, empty.Revision, 10)
	requireNoError(t, "Events after an empty snapshot", err)
	if len(evs) != 0 {
		t.Fatalf("new store has events: %+v", evs)
	}

	entries := create(t, s,
		newEntry(t, "/w/a", "/agent/1", "unix:uid:1"),
		newEntry(t, "/w/b", "/agent/1", "unix:uid:1"),
		newEntry(t, "/w/c", "/agent/1", "unix:uid:1"))
	snap1, err := s.Snapshot(ctx)
	requireNoError(t, "Snapshot", err)
	requireSameEntries(t, "snapshot", entries, snap1.Entries)
	requireSnapshotRevision(t, snap1)

	// More changes of every kind.
	upd := entries[0].Clone()
	upd.Admin = true
	_, err = replace(ctx, s, upd)
	requireNoError(t, "UpdateEntry", err)
	_, err = s.DeleteEntry(ctx, entries[1].ID)
	requireNoError(t, "DeleteEntry", err)
	requireNoError(t, "CreateAgent", s.CreateAgent(ctx, newAgent("/agent/1")))
	create(t, s, newEntry(t, "/w/d", "/agent/2", "unix:uid:4"))

	snap2, err := s.Snapshot(ctx)
	requireNoError(t, "Snapshot", err)
	requireSameEntries(t, "second snapshot", listAll(t, s), snap2.Entries)
	requireSnapshotRevision(t, snap2)
	if snap2.Revision <= snap1.Revision {
		t.Errorf("snapshot revision %d did not grow past %d", snap2.Revision, snap1.Revision)
	}

	// Replaying the events after the first snapshot onto it gives the
	// second.
	replayed := replay(snap1.Entries, allEvents(t, s, snap1.Revision))
	requireSameEntries(t, "first snapshot plus events", snap2.Entries, replayed)
	if evs := allEvents(t, s, snap2.Revision); len(evs) != 0 {
		t.Errorf("events after the latest snapshot: %+v", evs)
	}
}

func requireSnapshotRevision(t testing.TB, snap *datastore.Snapshot) {
	t.Helper()
	for _, e := range snap.Entries {
		if e.Revision > snap.Revision {
			t.Errorf("snapshot at revision %d has entry %s at revision %d", snap.Revision, e.ID, e.Revision)
		}
	}
}

// replay applies the entry events evs to entries.
func replay(entries []*entry.Entry, evs []datastore.Event) []*entry.Entry {
	byID := map[string]*entry.Entry{}
	for _, e := range entries {
		byID[e.ID] = e
	}
	for _, ev := range evs {
		if ev.Kind != datastore.EventEntry {
			continue
		}
		if ev.Entry == nil {
			delete(byID, ev.Key)
		} else {
			byID[ev.Key] = ev.Entry
		}
	}
	out := make([]*entry.Entry, 0, len(byID))
	for _, e := range byID {
		out = append(out, e)
	}
	return out
}

// testSnapshotConsistentUnderWrites takes snapshots while entries are
// being created: each must hold exactly the entries created up to its
// revision.
func testSnapshotConsistentUnderWrites(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	const n = 60
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			e := newEntry(t, fmt.Sprintf("/w/%d", i), "/agent/1", "unix:uid:1")
			if res, err := s.CreateEntries(t.Context(), []*entry.Entry{e}); err != nil || res[0].Err != nil {
				t.Errorf("CreateEntries: %v %v", err, res)
				return
			}
		}
	}()
	var snaps []*datastore.Snapshot
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		snap, err := s.Snapshot(t.Context())
		requireNoError(t, "Snapshot", err)
		snaps = append(snaps, snap)
	}
	all := allEvents(t, s, 0)
	if len(all) != n {
		t.Fatalf("got %d events, want %d", len(all), n)
	}
	for _, snap := range snaps {
		var want []*entry.Entry
		for _, ev := range all {
			if ev.Revision <= snap.Revision {
				want = append(want, ev.Entry)
			}
		}
		requireSameEntries(t, fmt.Sprintf("snapshot at revision %d", snap.Revision), want, snap.Entries)
	}
	t.Logf("checked %d snapshots", len(snaps))
}

func testWatch(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	ctx := t.Context()
	ch, stop := s.Watch()
	defer stop()
	if c := cap(ch); c != 1 {
		t.Errorf("watch channel has capacity %d, want 1", c)
	}
	other, stopOther := s.Watch()
	defer stopOther()

	// Each change signals after it is committed: what it wrote is
	// visible by the time the signal arrives.
	for i := range 3 {
		drain(ch)
		drain(other)
		e := newEntry(t, fmt.Sprintf("/w/%d", i), "/agent/1", "unix:uid:1")
		e.ID = entry.NewID()
		var wg sync.WaitGroup
		wg.Go(func() {
			if res, err := s.CreateEntries(ctx, []*entry.Entry{e}); err != nil || res[0].Err != nil {
				t.Errorf("CreateEntries: %v %v", err, res)
			}
		})
		// A signal may be late for an earlier change; the one for this
		// change must come after it is visible.
		for visible := false; !visible; {
			waitSignal(t, "watch after CreateEntries (a signal before the change was visible?)", ch)
			_, err := s.FetchEntry(ctx, e.ID)
			if err != nil && !errors.Is(err, datastore.ErrNotFound) {
				t.Fatalf("FetchEntry: %v", err)
			}
			visible = err == nil
		}
		waitSignal(t, "second watch after CreateEntries", other)
		wg.Wait()
	}

	// Other kinds of change signal too.
	for _, c := range []struct {
		name string
		fn   func() error
	}{
		{"CreateAgent", func() error { return s.CreateAgent(ctx, newAgent("/agent/1")) }},
		{"UpdateBundle", func() error {
			_, err := s.UpdateBundle(ctx, td, func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error) { return newBundle(t, td), nil })
			return err
		}},
		{"DeleteBundle", func() error { return s.DeleteBundle(ctx, td) }},
	} {
		drain(ch)
		requireNoError(t, c.name, c.fn())
		waitSignal(t, "watch after "+c.name, ch)
	}

	// Writers never wait for a watcher that does not read.
	drain(ch)
	within(t, "writes with an unread watcher", func() {
		for i := range 20 {
			e := newEntry(t, fmt.Sprintf("/w/unread/%d", i), "/agent/1", "unix:uid:1")
			if _, err := s.CreateEntries(ctx, []*entry.Entry{e}); err != nil {
				t.Errorf("CreateEntries: %v", err)
				return
			}
		}
	})
	waitSignal(t, "watch after unread writes", ch)

	// After stop (which may be called twice), no more signals.
	stopOther()
	stopOther()
	drain(other)
	create(t, s, newEntry(t, "/w/after-stop", "/agent/1", "unix:uid:1"))
	waitSignal(t, "watch that was not stopped", ch)
	select {
	case <-other:
		t.Error("stopped watch received a signal")
	case <-time.After(100 * time.Millisecond):
	}
}
