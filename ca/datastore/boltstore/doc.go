// Package boltstore is the embedded datastore of a single CA server: a
// datastore.Store in one bbolt file.
//
//	s, err := boltstore.Open("/var/lib/writ/datastore.db", boltstore.Options{Logger: log})
//	switch {
//	case errors.Is(err, datastore.ErrInUse):
//		// Another writ server has the file open.
//	case errors.Is(err, datastore.ErrCorrupt):
//		// Refuse to start; the message names the file.
//	case err != nil:
//		...
//	}
//	defer s.Close()
//
// Every method that changes something is one bbolt transaction, synced to
// disk before it returns, so every write that returned without error
// survives a crash. A batch of CreateEntries is one transaction too.
//
// # Layout
//
// Entries are stored under the revision that created them, with an index
// from entry ID, and indexes by SPIFFE ID, parent ID and selector, and of
// entry.Entry.UniqueKey to refuse duplicates. Each entry, agent and bundle
// change takes the next revision and logs an event under it in the same
// transaction; the log keeps the newest Options.MaxEvents events, so
// revisions in it are contiguous. Records are a compact binary encoding
// that starts with a version byte and ends with a CRC-32C; the file's
// layout has a version of its own in the meta bucket.
//
// # Caveats
//
//   - One process at a time: Open takes an exclusive lock on the file and
//     fails after Options.LockTimeout with datastore.ErrInUse, even within
//     the process that holds it.
//   - Open creates a missing file (under a temporary name, linked into
//     place when complete), so the caller decides whether a missing file
//     is acceptable, for example when other state exists beside it. The
//     directory must exist; keeping it 0700 is the caller's job. New files
//     are 0600, and a file readable by group or others is refused.
//   - Open reads and checks the whole file, every record and index key and
//     bbolt's page structure: about 6 ms per thousand entries. A file that
//     fails is refused with datastore.ErrCorrupt and left untouched, never
//     re-initialized. This catches ordinary damage (truncation, overwritten
//     or torn pages, flipped bits inside records); a file crafted to attack
//     bbolt's parser can still crash the process.
//   - The store checks only what its indexes rely on: entries need a
//     SPIFFE ID, a parent ID and sorted, unique selectors (see
//     entry.Entry.Normalize), or fail with entry.ErrInvalid. A caller-chosen
//     entry ID must have the form entry.NewID makes. The server validates
//     entries in full before storing them.
//   - UpdateBundle runs fn outside the write transaction and retries it if
//     the bundle changed meanwhile: fn may run more than once and must not
//     have side effects.
//   - Watch signals after every committed change, including join tokens and
//     CA keys, which log no events.
//   - Entries are listed in the order they were created; agents, bundles
//     and CA keys in key order. Times come back in UTC.
//   - Errors about join tokens never include the hash.
package boltstore
