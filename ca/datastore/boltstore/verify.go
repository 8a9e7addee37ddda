package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.etcd.io/bbolt"
)

// verify reads the whole file and checks every invariant the store keeps,
// so that a damaged file is refused at Open rather than found piecemeal
// later. It returns plain errors; Open wraps them in datastore.ErrCorrupt.
func verify(db *bbolt.DB) error {
	err := db.View(func(tx *bbolt.Tx) error {
		// A truncated file has pages beyond its end; reading them
		// faults. Check the size before anything reads a page.
		info, err := os.Stat(db.Path())
		if err != nil {
			return err
		}
		if info.Size() < tx.Size() {
			return fmt.Errorf("file is truncated: %d bytes, but its pages need %d", info.Size(), tx.Size())
		}
		if err := touchAll(tx); err != nil {
			return err
		}
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			return errors.New("not a writ datastore (no meta bucket)")
		}
		switch v := meta.Get(keyFormat); {
		case len(v) != 1:
			return errors.New("format version is missing")
		case v[0] > formatVersion:
			return fmt.Errorf("format version %d is newer than this writ supports (%d): run the newer writ", v[0], formatVersion)
		case v[0] != formatVersion:
			return fmt.Errorf("unknown format version %d", v[0])
		}
		for _, name := range allBuckets {
			if tx.Bucket(name) == nil {
				return fmt.Errorf("bucket %q is missing", name)
			}
		}
		r, err := newReader(context.Background(), tx)
		if err != nil {
			return err
		}
		return r.verify()
	})
	if err != nil {
		return err
	}
	// bbolt's own check of page structure and free list. It runs on a
	// goroutine of its own, where a memory fault would crash the process,
	// so only now that every page it visits has been read here without
	// fault.
	return db.View(func(tx *bbolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			if len(errs) < 5 {
				errs = append(errs, err)
			}
		}
		if len(errs) > 0 {
			return fmt.Errorf("bbolt consistency check: %w", errors.Join(errs...))
		}
		return nil
	})
}

func (r *reader) verify() error {
	rev, err := r.metaUint64(keyRevision)
	if err != nil {
		return err
	}
	pruned, err := r.metaUint64(keyPruned)
	if err != nil {
		return err
	}
	if pruned > rev {
		return fmt.Errorf("pruned revision %d is above the latest, %d", pruned, rev)
	}

	// Each entry, and the index keys it must have.
	var nEntries, nSelectors int
	err = r.entries.ForEach(func(seq, v []byte) error {
		e, err := decodeEntry(v)
		if err != nil {
			return fmt.Errorf("entry %x: %w", seq, err)
		}
		if err := checkEntry(e); err != nil {
			return fmt.Errorf("entry %q: %w", e.ID, err)
		}
		if len(seq) != 8 {
			return fmt.Errorf("entry %q has sequence number %x", e.ID, seq)
		}
		// An entry's sequence number is the revision that created it.
		if created := binary.BigEndian.Uint64(seq); e.Revision < created || e.Revision > rev {
			return fmt.Errorf("entry %q has revision %d, outside %d..%d", e.ID, e.Revision, created, rev)
		}
		if !bytes.Equal(r.entryIDs.Get([]byte(e.ID)), seq) {
			return fmt.Errorf("entry %q is missing from the ID index", e.ID)
		}
		key := e.UniqueKey()
		if string(r.unique.Get(key[:])) != e.ID {
			return fmt.Errorf("entry %q is missing from the uniqueness index", e.ID)
		}
		missing := r.bySPIFFEID.Get(indexKey(idPrefix(e.SPIFFEID), seq)) == nil ||
			r.byParentID.Get(indexKey(idPrefix(e.ParentID), seq)) == nil
		for _, sel := range e.Selectors {
			missing = missing || r.bySelector.Get(indexKey(selectorPrefix(sel), seq)) == nil
		}
		if missing {
			return fmt.Errorf("entry %q is missing from an index", e.ID)
		}
		nEntries++
		nSelectors += len(e.Selectors)
		return nil
	})
	if err != nil {
		return err
	}
	// With every entry's keys present, equal counts mean no stray keys.
	for _, idx := range []struct {
		name string
		b    *bbolt.Bucket
		want int
	}{
		{"ID", r.entryIDs, nEntries},
		{"uniqueness", r.unique, nEntries},
		{"SPIFFE ID", r.bySPIFFEID, nEntries},
		{"parent ID", r.byParentID, nEntries},
		{"selector", r.bySelector, nSelectors},
	} {
		if n := countKeys(idx.b); n != idx.want {
			return fmt.Errorf("the %s index has %d keys for %d entries", idx.name, n, idx.want)
		}
	}

	// The event log holds exactly the revisions pruned+1 .. rev.
	next := pruned + 1
	err = r.events.ForEach(func(k, v []byte) error {
		if len(k) != 8 || binary.BigEndian.Uint64(k) != next {
			return fmt.Errorf("event log: found key %x where revision %d should be", k, next)
		}
		if _, err := decodeEvent(next, v); err != nil {
			return fmt.Errorf("event %d: %w", next, err)
		}
		next++
		return nil
	})
	if err != nil {
		return err
	}
	if next != rev+1 {
		return fmt.Errorf("event log ends at revision %d, but the latest is %d", next-1, rev)
	}

	// The other records decode.
	err = r.agents.ForEach(func(k, v []byte) error {
		a, err := decodeAgent(v)
		if err == nil && a.SPIFFEID.String() != string(k) {
			err = errors.New("stored under another SPIFFE ID")
		}
		if err != nil {
			return fmt.Errorf("agent %q: %w", k, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	err = r.tokens.ForEach(func(_, v []byte) error {
		_, err := decodeJoinToken(v)
		return err
	})
	if err != nil {
		return fmt.Errorf("join token: %w", err)
	}
	err = r.bundles.ForEach(func(k, v []byte) error {
		td, err := spiffeid.TrustDomainFromString(string(k))
		if err != nil {
			return fmt.Errorf("bundle %q: %w", k, err)
		}
		_, err = decodeBundle(td, v)
		return err
	})
	if err != nil {
		return err
	}
	err = r.caKeys.ForEach(func(k, v []byte) error {
		key, err := decodeCAKey(v)
		if err == nil && key.ID != string(k) {
			err = fmt.Errorf("stored under ID %q", k)
		}
		if err != nil {
			return fmt.Errorf("CA key %q: %w", k, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := r.verifyOAuth(); err != nil {
		return err
	}
	if r.servers == nil {
		return nil
	}
	return r.servers.ForEach(func(k, v []byte) error {
		srv, err := decodeServer(v)
		if err == nil && srv.ID != string(k) {
			err = fmt.Errorf("the record names server %q", srv.ID)
		}
		if err != nil {
			return fmt.Errorf("server %q: %w", k, err)
		}
		return nil
	})
}

func countKeys(b *bbolt.Bucket) int {
	n := 0
	c := b.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		n++
	}
	return n
}

// touchAll reads every key and value of every bucket, so that a page
// beyond the end of the file or a wild page reference faults here, where
// guardFaults turns it into an error, rather than later.
func touchAll(tx *bbolt.Tx) error {
	var sum byte
	var walk func(b *bbolt.Bucket)
	walk = func(b *bbolt.Bucket) {
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			sum ^= k[0] ^ k[len(k)-1]
			if v == nil {
				if child := b.Bucket(k); child != nil {
					walk(child)
				}
			} else if len(v) > 0 {
				sum ^= v[0] ^ v[len(v)-1]
			}
		}
	}
	err := tx.ForEach(func(name []byte, b *bbolt.Bucket) error {
		walk(b)
		return nil
	})
	_ = sum
	return err
}
