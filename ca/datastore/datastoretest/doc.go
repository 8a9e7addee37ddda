// Package datastoretest is the conformance suite of datastore.Store: every
// backend runs it from its own tests, against real storage, and must pass
// it whole.
//
//	func TestConformance(t *testing.T) {
//		datastoretest.Run(t, func(t *testing.T) datastore.Store {
//			s, err := boltstore.Open(filepath.Join(t.TempDir(), "writ.db"), boltstore.Options{})
//			if err != nil {
//				t.Fatal(err)
//			}
//			t.Cleanup(func() { s.Close() })
//			return s
//		})
//	}
//
// Run covers every method: entries (IDs, duplicates within a batch and
// against stored entries, revisions, each filter, index upkeep on update
// and delete), agents, join tokens (exactly one winner among concurrent
// consumers, expiry, pruning), bundles (concurrent read-modify-writes lose
// nothing, a failing fn writes nothing), CA keys, server records, the event log, snapshots
// consistent with it under concurrent writes, Watch, copies (nothing
// returned or passed in aliases stored state) and context cancellation.
// Conditions are checked with errors.Is, never by message. Concurrent
// updates of different fields of one entry lose none, and a reader of
// Events never sees a revision appear below one it has already seen.
//
// RunShared runs the tests of two handles on one database, for backends
// that allow it (pgstore; boltstore locks its file): changes through one
// handle reach the other's Watch, Events and Snapshot, a join token is
// consumed once across both, and UpdateEntry, UpdateAgent and
// UpdateBundle lose nothing when called through both at once.
//
// Where datastore.Store leaves a case open, the suite settles it, so that
// all backends agree:
//
//   - Deleting or updating a record that does not exist fails with
//     datastore.ErrNotFound.
//   - CreateEntries does not modify the caller's entries, keeps a given ID
//     and fails an entry with entry.ErrInvalid (alone) if it has no SPIFFE
//     ID or parent ID, if its selectors are not sorted and unique, or if
//     its given ID is not of the entry.NewID form.
//   - UpdateEntry stores every field fn sets but Revision; fn may not
//     change the ID (entry.ErrInvalid).
//   - Revisions are above zero, so Events(ctx, 0, n) starts at the
//     beginning; only entry, agent and bundle changes log events.
//   - A token expiring exactly at now has expired.
//   - PutServer refuses an empty server ID with entry.ErrInvalid.
//   - UpdateBundle refuses a bundle of another trust domain.
//   - Close may be called more than once.
//
// Caveats: tests run one after another, each on a fresh store from
// newStore, so newStore may reset one shared database. Fixtures use whole
// seconds in UTC, which every backend stores exactly. The test of
// datastore.ErrEventsPruned needs the store to implement EventPruner and
// is skipped otherwise. A few tests wait (at most 100 ms each) to see that
// something does not happen.
package datastoretest
