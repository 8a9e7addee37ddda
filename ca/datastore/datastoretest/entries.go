package datastoretest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

func testCreateEntries(t *testing.T, newStore NewStoreFunc) {
	givenID := entry.NewID()
	// with returns a copy of e changed by fn.
	with := func(e *entry.Entry, fn func(*entry.Entry)) *entry.Entry {
		c := e.Clone()
		fn(c)
		return c
	}
	a := newEntry(t, "/w/a", "/agent/1", "unix:uid:1", "unix:gid:1")
	b := newEntry(t, "/w/b", "/agent/1", "unix:uid:2")

	tests := []struct {
		name     string
		existing []*entry.Entry
		batch    []*entry.Entry
		// wantErr holds, per entry of batch, the error it must fail
		// with, or nil.
		wantErr []error
	}{
		{
			name:    "new entries get IDs",
			batch:   []*entry.Entry{a, b},
			wantErr: []error{nil, nil},
		},
		{
			name:    "empty batch",
			batch:   []*entry.Entry{},
			wantErr: []error{},
		},
		{
			name:     "duplicate of a stored entry fails alone",
			existing: []*entry.Entry{a},
			batch: []*entry.Entry{
				b,
				with(a, func(e *entry.Entry) { e.DNSNames = nil; e.Admin = true; e.FederatesWith = nil }),
			},
			wantErr: []error{nil, datastore.ErrAlreadyExists},
		},
		{
			name:    "duplicate inside the batch",
			batch:   []*entry.Entry{a, b, a.Clone()},
			wantErr: []error{nil, nil, datastore.ErrAlreadyExists},
		},
		{
			name: "same SPIFFE ID and parent, other selectors",
			batch: []*entry.Entry{a, with(a, func(e *entry.Entry) {
				e.Selectors = selectors(t, "unix:uid:1")
			})},
			wantErr: []error{nil, nil},
		},
		{
			name: "same SPIFFE ID and selectors, other parent",
			batch: []*entry.Entry{a, with(a, func(e *entry.Entry) {
				e.ParentID = id("/agent/2")
			})},
			wantErr: []error{nil, nil},
		},
		{
			name: "same parent and selectors, other SPIFFE ID",
			batch: []*entry.Entry{a, with(a, func(e *entry.Entry) {
				e.SPIFFEID = id("/w/other")
			})},
			wantErr: []error{nil, nil},
		},
		{
			name:    "a given ID is kept",
			batch:   []*entry.Entry{with(a, func(e *entry.Entry) { e.ID = givenID })},
			wantErr: []error{nil},
		},
		{
			name:     "a taken ID fails",
			existing: []*entry.Entry{with(a, func(e *entry.Entry) { e.ID = givenID })},
			batch:    []*entry.Entry{with(b, func(e *entry.Entry) { e.ID = givenID })},
			wantErr:  []error{datastore.ErrAlreadyExists},
		},
		{
			name: "an ID taken inside the batch fails",
			batch: []*entry.Entry{
				with(a, func(e *entry.Entry) { e.ID = givenID }),
				with(b, func(e *entry.Entry) { e.ID = givenID }),
			},
			wantErr: []error{nil, datastore.ErrAlreadyExists},
		},
		{
			name: "invalid entries fail alone",
			batch: []*entry.Entry{
				nil,
				with(a, func(e *entry.Entry) { e.SPIFFEID = spiffeid.ID{} }),
				with(a, func(e *entry.Entry) { e.ParentID = spiffeid.ID{} }),
				with(a, func(e *entry.Entry) {
					e.Selectors = []entry.Selector{{Type: "unix", Value: "uid:2"}, {Type: "unix", Value: "uid:1"}}
				}),
				with(a, func(e *entry.Entry) {
					e.Selectors = []entry.Selector{{Type: "unix", Value: "uid:1"}, {Type: "unix", Value: "uid:1"}}
				}),
				with(a, func(e *entry.Entry) { e.ID = "not-a-uuid" }),
				b,
			},
			wantErr: []error{entry.ErrInvalid, entry.ErrInvalid, entry.ErrInvalid, entry.ErrInvalid, entry.ErrInvalid, entry.ErrInvalid, nil},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			existing := create(t, s, tt.existing...)
			var lastRev uint64
			for _, e := range existing {
				lastRev = max(lastRev, e.Revision)
			}
			before := make([]*entry.Entry, len(tt.batch))
			for i, e := range tt.batch {
				if e != nil {
					before[i] = e.Clone()
				}
			}

			results, err := s.CreateEntries(t.Context(), tt.batch)
			requireNoError(t, "CreateEntries", err)
			if len(results) != len(tt.batch) {
				t.Fatalf("got %d results for %d entries", len(results), len(tt.batch))
			}
			stored := existing
			seen := map[string]bool{}
			for i, r := range results {
				want := tt.wantErr[i]
				if want != nil {
					requireErrorIs(t, fmt.Sprintf("entry %d", i), r.Err, want)
					continue
				}
				if r.Err != nil || r.Entry == nil {
					t.Fatalf("entry %d: got error %v, entry %v; want success", i, r.Err, r.Entry)
				}
				got := r.Entry
				if _, err := entry.ParseEntryID(got.ID); err != nil {
					t.Errorf("entry %d: assigned ID: %v", i, err)
				}
				if tt.batch[i].ID != "" && got.ID != tt.batch[i].ID {
					t.Errorf("entry %d: got ID %q, want the given %q", i, got.ID, tt.batch[i].ID)
				}
				if seen[got.ID] {
					t.Errorf("entry %d: ID %s given twice", i, got.ID)
				}
				seen[got.ID] = true
				if got.Revision <= lastRev {
					t.Errorf("entry %d: revision %d does not grow (previous %d)", i, got.Revision, lastRev)
				}
				lastRev = got.Revision
				requireEntry(t, fmt.Sprintf("entry %d as stored", i), withoutStoreFields(tt.batch[i]), withoutStoreFields(got))
				fetched, err := s.FetchEntry(t.Context(), got.ID)
				requireNoError(t, "FetchEntry", err)
				requireEntry(t, fmt.Sprintf("entry %d fetched", i), got, fetched)
				stored = append(stored, got)
			}
			for i := range tt.batch {
				if !entryEqual(before[i], tt.batch[i]) {
					t.Errorf("entry %d: CreateEntries modified the caller's entry:\n got %+v\nwant %+v", i, tt.batch[i], before[i])
				}
			}
			requireSameEntries(t, "stored entries", stored, listAll(t, s))
		})
	}
}

func testCreateEntriesLargeBatch(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	const n = 1000
	batch := make([]*entry.Entry, n)
	for i := range batch {
		batch[i] = newEntry(t, fmt.Sprintf("/w/%d", i), fmt.Sprintf("/agent/%d", i%10), fmt.Sprintf("unix:uid:%d", i))
	}
	// One duplicate in the middle must not stop the rest.
	batch[n/2] = batch[n/2-1].Clone()
	results, err := s.CreateEntries(t.Context(), batch)
	requireNoError(t, "CreateEntries", err)
	var created []*entry.Entry
	for i, r := range results {
		if i == n/2 {
			requireErrorIs(t, "duplicate", r.Err, datastore.ErrAlreadyExists)
			continue
		}
		if r.Err != nil {
			t.Fatalf("entry %d: %v", i, r.Err)
		}
		created = append(created, r.Entry)
	}
	requireSameEntries(t, "listed", created, listAll(t, s))
	byParent, err := s.ListEntries(t.Context(), datastore.EntryFilter{ParentID: id("/agent/3")})
	requireNoError(t, "ListEntries", err)
	if len(byParent) != n/10 {
		t.Errorf("got %d entries of /agent/3, want %d", len(byParent), n/10)
	}
}

func testFetchEntry(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	e := create(t, s, newEntry(t, "/w/a", "/agent/1", "unix:uid:1"))[0]
	got, err := s.FetchEntry(t.Context(), e.ID)
	requireNoError(t, "FetchEntry", err)
	requireEntry(t, "fetched", e, got)
	for _, missing := range []string{entry.NewID(), ""} {
		_, err := s.FetchEntry(t.Context(), missing)
		requireErrorIs(t, fmt.Sprintf("FetchEntry(%q)", missing), err, datastore.ErrNotFound)
	}
	// A template entry keeps its template, and is no duplicate of the
	// plain entry with its prefix.
	plain := newEntry(t, "/user", "/agent/1", "unix:gid:1")
	tmpl := newEntry(t, "/user", "/agent/1", "unix:gid:1")
	tmpl.Template = "spiffe://example.org/user/{{unix.user}}"
	stored := create(t, s, plain, tmpl)
	got, err = s.FetchEntry(t.Context(), stored[1].ID)
	requireNoError(t, "FetchEntry", err)
	requireEntry(t, "fetched template", stored[1], got)
	if got.Template != tmpl.Template {
		t.Fatalf("template %q, want %q", got.Template, tmpl.Template)
	}
	list, err := s.ListEntries(t.Context(), datastore.EntryFilter{SPIFFEID: id("/user")})
	requireNoError(t, "ListEntries", err)
	if len(list) != 2 {
		t.Fatalf("ListEntries by the template's prefix: %d entries, want 2", len(list))
	}
}

func testListEntries(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	// The fixtures include near misses for stores that scan index
	// prefixes: /w/ab after /w/a, /agent/10 after /agent/1, unix:uid:10
	// after unix:uid:1.
	fixtures := []struct {
		name             string
		spiffeID, parent string
		sels             []string
	}{
		{"a", "/w/a", "/agent/1", []string{"unix:uid:1", "unix:gid:1"}},
		{"b", "/w/b", "/agent/1", []string{"unix:uid:1"}},
		{"c", "/w/a", "/agent/2", []string{"unix:uid:1", "unix:gid:2"}},
		{"d", "/w/d", "/agent/2", []string{"k8s:ns:x"}},
		{"e", "/w/a", "/agent/1", []string{"unix:uid:2"}},
		{"f", "/w/ab", "/agent/10", []string{"unix:uid:10", "unix:gid:1"}},
	}
	byName := map[string]*entry.Entry{}
	for _, f := range fixtures {
		byName[f.name] = create(t, s, newEntry(t, f.spiffeID, f.parent, f.sels...))[0]
	}

	tests := []struct {
		name   string
		filter datastore.EntryFilter
		want   []string
	}{
		{"no filter", datastore.EntryFilter{}, []string{"a", "b", "c", "d", "e", "f"}},
		{"SPIFFE ID", datastore.EntryFilter{SPIFFEID: id("/w/a")}, []string{"a", "c", "e"}},
		{"SPIFFE ID with a longer sibling", datastore.EntryFilter{SPIFFEID: id("/w/ab")}, []string{"f"}},
		{"unknown SPIFFE ID", datastore.EntryFilter{SPIFFEID: id("/w/zzz")}, nil},
		{"parent ID", datastore.EntryFilter{ParentID: id("/agent/1")}, []string{"a", "b", "e"}},
		{"unknown parent ID", datastore.EntryFilter{ParentID: id("/agent/9")}, nil},
		{"one selector", datastore.EntryFilter{Selectors: selectors(t, "unix:uid:1")}, []string{"a", "b", "c"}},
		{"all of two selectors", datastore.EntryFilter{Selectors: selectors(t, "unix:uid:1", "unix:gid:1")}, []string{"a"}},
		{"selectors in any order", datastore.EntryFilter{Selectors: []entry.Selector{
			{Type: "unix", Value: "uid:1"}, {Type: "unix", Value: "gid:1"},
		}}, []string{"a"}},
		{"selectors no entry has together", datastore.EntryFilter{Selectors: selectors(t, "unix:uid:1", "k8s:ns:x")}, nil},
		{"unknown selector", datastore.EntryFilter{Selectors: selectors(t, "unix:uid:99")}, nil},
		{"SPIFFE ID and parent ID", datastore.EntryFilter{SPIFFEID: id("/w/a"), ParentID: id("/agent/2")}, []string{"c"}},
		{"parent ID and selector", datastore.EntryFilter{ParentID: id("/agent/1"), Selectors: selectors(t, "unix:uid:1")}, []string{"a", "b"}},
		{"SPIFFE ID and selector", datastore.EntryFilter{SPIFFEID: id("/w/a"), Selectors: selectors(t, "unix:gid:2")}, []string{"c"}},
		{"all three", datastore.EntryFilter{SPIFFEID: id("/w/a"), ParentID: id("/agent/1"), Selectors: selectors(t, "unix:uid:2")}, []string{"e"}},
		{"all three, no match", datastore.EntryFilter{SPIFFEID: id("/w/a"), ParentID: id("/agent/2"), Selectors: selectors(t, "unix:uid:2")}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.ListEntries(t.Context(), tt.filter)
			requireNoError(t, "ListEntries", err)
			var want []*entry.Entry
			for _, n := range tt.want {
				want = append(want, byName[n])
			}
			requireSameEntries(t, "listed", want, got)
		})
	}
}

func testUpdateEntry(t *testing.T, newStore NewStoreFunc) {
	t.Run("not found", func(t *testing.T) {
		s := newStore(t)
		create(t, s, newEntry(t, "/w/a", "/agent/1", "unix:uid:1"))
		rev := latestRevision(t, s)
		for _, missing := range []string{entry.NewID(), ""} {
			e := newEntry(t, "/w/b", "/agent/1", "unix:uid:1")
			e.ID = missing
			_, err := replace(t.Context(), s, e)
			requireErrorIs(t, fmt.Sprintf("UpdateEntry(%q)", missing), err, datastore.ErrNotFound)
		}
		if evs := allEvents(t, s, rev); len(evs) != 0 {
			t.Errorf("failed updates logged events: %+v", evs)
		}
	})

	t.Run("replaces the entry and its index keys", func(t *testing.T) {
		s := newStore(t)
		old := create(t, s, newEntry(t, "/w/a", "/agent/1", "unix:uid:1", "unix:gid:1"))[0]
		other := create(t, s, newEntry(t, "/w/b", "/agent/1", "unix:uid:1"))[0]

		upd := newEntry(t, "/w/z", "/agent/3", "unix:uid:9")
		upd.ID = old.ID
		upd.DNSNames = []string{"other.example.org", "more.example.org"}
		upd.X509SVIDTTL = 2 * time.Hour
		upd.Admin = true
		upd.Downstream = false
		upd.FederatesWith = []spiffeid.TrustDomain{spiffeid.RequireTrustDomainFromString("b.test")}
		upd.CreatedAt = t0.Add(-24 * time.Hour)
		got, err := replace(t.Context(), s, upd)
		requireNoError(t, "UpdateEntry", err)
		requireEntry(t, "updated", withoutStoreFields(upd), withoutStoreFields(got))
		if got.ID != old.ID {
			t.Errorf("ID changed from %s to %s", old.ID, got.ID)
		}
		if got.Revision <= other.Revision {
			t.Errorf("revision %d did not grow past %d", got.Revision, other.Revision)
		}
		fetched, err := s.FetchEntry(t.Context(), old.ID)
		requireNoError(t, "FetchEntry", err)
		requireEntry(t, "fetched", got, fetched)

		for _, c := range []struct {
			name   string
			filter datastore.EntryFilter
			want   []*entry.Entry
		}{
			{"old SPIFFE ID", datastore.EntryFilter{SPIFFEID: id("/w/a")}, nil},
			{"new SPIFFE ID", datastore.EntryFilter{SPIFFEID: id("/w/z")}, []*entry.Entry{got}},
			{"old parent", datastore.EntryFilter{ParentID: id("/agent/1")}, []*entry.Entry{other}},
			{"new parent", datastore.EntryFilter{ParentID: id("/agent/3")}, []*entry.Entry{got}},
			{"old selector", datastore.EntryFilter{Selectors: selectors(t, "unix:uid:1")}, []*entry.Entry{other}},
			{"dropped selector", datastore.EntryFilter{Selectors: selectors(t, "unix:gid:1")}, nil},
			{"new selector", datastore.EntryFilter{Selectors: selectors(t, "unix:uid:9")}, []*entry.Entry{got}},
		} {
			list, err := s.ListEntries(t.Context(), c.filter)
			requireNoError(t, "ListEntries "+c.name, err)
			requireSameEntries(t, c.name, c.want, list)
		}

		// The old (SPIFFE ID, parent, selectors) is free again.
		create(t, s, newEntry(t, "/w/a", "/agent/1", "unix:uid:1", "unix:gid:1"))
	})

	t.Run("becoming a duplicate fails", func(t *testing.T) {
		s := newStore(t)
		entries := create(t, s,
			newEntry(t, "/w/a", "/agent/1", "unix:uid:1"),
			newEntry(t, "/w/b", "/agent/1", "unix:uid:2"))
		rev := latestRevision(t, s)
		upd := newEntry(t, "/w/a", "/agent/1", "unix:uid:1")
		upd.ID = entries[1].ID
		upd.DNSNames = []string{"new.example.org"}
		_, err := replace(t.Context(), s, upd)
		requireErrorIs(t, "UpdateEntry", err, datastore.ErrAlreadyExists)
		requireSameEntries(t, "after failed update", entries, listAll(t, s))
		if evs := allEvents(t, s, rev); len(evs) != 0 {
			t.Errorf("failed update logged events: %+v", evs)
		}
	})

	t.Run("same key, other fields", func(t *testing.T) {
		s := newStore(t)
		old := create(t, s, newEntry(t, "/w/a", "/agent/1", "unix:uid:1"))[0]
		upd := old.Clone()
		upd.DNSNames = []string{"new.example.org"}
		upd.JWTSVIDTTL = time.Minute
		got, err := replace(t.Context(), s, upd)
		requireNoError(t, "UpdateEntry", err)
		requireEntry(t, "updated", withoutStoreFields(upd), withoutStoreFields(got))
		if got.Revision <= old.Revision {
			t.Errorf("revision %d did not grow past %d", got.Revision, old.Revision)
		}
	})

	t.Run("fn's error writes nothing", func(t *testing.T) {
		s := newStore(t)
		old := create(t, s, newEntry(t, "/w/a", "/agent/1", "unix:uid:1"))[0]
		_, err := s.UpdateEntry(t.Context(), old.ID, func(e *entry.Entry) error {
			e.Admin = true
			return errTest
		})
		requireErrorIs(t, "UpdateEntry with a failing fn", err, errTest)
		_, err = s.UpdateEntry(t.Context(), old.ID, func(e *entry.Entry) error {
			e.ID = entry.NewID()
			return nil
		})
		requireErrorIs(t, "UpdateEntry changing the ID", err, entry.ErrInvalid)
		requireSameEntries(t, "after failed updates", []*entry.Entry{old}, listAll(t, s))
		if evs := allEvents(t, s, old.Revision); len(evs) != 0 {
			t.Errorf("failed updates logged events: %+v", evs)
		}
	})

	t.Run("fn sees the stored entry", func(t *testing.T) {
		s := newStore(t)
		old := create(t, s, newEntry(t, "/w/a", "/agent/1", "unix:uid:1"))[0]
		var seen *entry.Entry
		got, err := s.UpdateEntry(t.Context(), old.ID, func(e *entry.Entry) error {
			seen = e.Clone()
			e.DNSNames = append(e.DNSNames, "more.example.org")
			return nil
		})
		requireNoError(t, "UpdateEntry", err)
		requireEntry(t, "entry passed to fn", old, seen)
		want := old.Clone()
		want.DNSNames = append(want.DNSNames, "more.example.org")
		want.Revision = got.Revision
		requireEntry(t, "updated", want, got)
	})

	t.Run("unsorted selectors are refused", func(t *testing.T) {
		s := newStore(t)
		old := create(t, s, newEntry(t, "/w/a", "/agent/1", "unix:uid:1"))[0]
		upd := old.Clone()
		upd.Selectors = []entry.Selector{{Type: "unix", Value: "uid:2"}, {Type: "unix", Value: "uid:1"}}
		_, err := replace(t.Context(), s, upd)
		requireErrorIs(t, "UpdateEntry", err, entry.ErrInvalid)
		requireSameEntries(t, "after failed update", []*entry.Entry{old}, listAll(t, s))
	})
}

func testDeleteEntry(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	entries := create(t, s,
		newEntry(t, "/w/a", "/agent/1", "unix:uid:1"),
		newEntry(t, "/w/b", "/agent/1", "unix:uid:1"))
	gone, kept := entries[0], entries[1]

	got, err := s.DeleteEntry(t.Context(), gone.ID)
	requireNoError(t, "DeleteEntry", err)
	requireEntry(t, "deleted entry as it was", gone, got)

	_, err = s.FetchEntry(t.Context(), gone.ID)
	requireErrorIs(t, "FetchEntry after delete", err, datastore.ErrNotFound)
	for _, missing := range []string{gone.ID, entry.NewID(), ""} {
		_, err = s.DeleteEntry(t.Context(), missing)
		requireErrorIs(t, fmt.Sprintf("DeleteEntry(%q)", missing), err, datastore.ErrNotFound)
	}
	for _, f := range []datastore.EntryFilter{
		{},
		{SPIFFEID: id("/w/a")},
		{ParentID: id("/agent/1")},
		{Selectors: selectors(t, "unix:uid:1")},
	} {
		list, err := s.ListEntries(t.Context(), f)
		requireNoError(t, "ListEntries", err)
		var want []*entry.Entry
		if f.SPIFFEID.IsZero() {
			want = []*entry.Entry{kept}
		}
		requireSameEntries(t, fmt.Sprintf("after delete, filter %+v", f), want, list)
	}
	// The deleted entry's key is free again.
	create(t, s, newEntry(t, "/w/a", "/agent/1", "unix:uid:1"))
}

func testConcurrentWriters(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	const writers, perWriter = 8, 20
	var wg sync.WaitGroup
	results := make([][]*entry.Entry, writers)
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				e := newEntry(t, fmt.Sprintf("/w/%d/%d", w, i), "/agent/1", "unix:uid:1")
				res, err := s.CreateEntries(t.Context(), []*entry.Entry{e})
				if err != nil || res[0].Err != nil {
					t.Errorf("writer %d: CreateEntries: %v, %v", w, err, res)
					return
				}
				results[w] = append(results[w], res[0].Entry)
				if _, err := s.ListEntries(t.Context(), datastore.EntryFilter{ParentID: id("/agent/1")}); err != nil {
					t.Errorf("writer %d: ListEntries: %v", w, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	var all []*entry.Entry
	revs := map[uint64]bool{}
	for _, r := range results {
		for _, e := range r {
			if revs[e.Revision] {
				t.Errorf("revision %d given twice", e.Revision)
			}
			revs[e.Revision] = true
		}
		all = append(all, r...)
	}
	requireSameEntries(t, "listed", all, listAll(t, s))
	if evs := allEvents(t, s, 0); len(evs) != writers*perWriter {
		t.Errorf("got %d events, want %d", len(evs), writers*perWriter)
	}
}
