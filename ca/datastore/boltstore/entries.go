package boltstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"

	"go.etcd.io/bbolt"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

// indexMark is the value of index keys, which carry everything in the key.
var indexMark = []byte{1}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", entry.ErrInvalid, fmt.Sprintf(format, args...))
}

// checkEntry checks what the store itself relies on. The server validates
// entries in full (entry.Entry.Validate) before storing them; the store
// only refuses what would break its indexes: missing IDs, values too long
// for a bbolt key, and selectors that are not sorted and unique, without
// which duplicates (entry.Entry.UniqueKey) would go unnoticed.
func checkEntry(e *entry.Entry) error {
	if e == nil {
		return invalid("entry is nil")
	}
	if e.SPIFFEID.IsZero() {
		return invalid("entry has no SPIFFE ID")
	}
	if e.ParentID.IsZero() {
		return invalid("entry has no parent ID")
	}
	if len(e.SPIFFEID.String()) > entry.MaxIDLength || len(e.ParentID.String()) > entry.MaxIDLength {
		return invalid("entry's SPIFFE ID or parent ID is longer than %d bytes", entry.MaxIDLength)
	}
	for i, s := range e.Selectors {
		if len(s.Type) > entry.MaxSelectorType || len(s.Value) > entry.MaxSelectorValue {
			return invalid("entry has a selector longer than %d:%d bytes", entry.MaxSelectorType, entry.MaxSelectorValue)
		}
		if i > 0 && e.Selectors[i-1].Compare(s) >= 0 {
			return invalid("entry's selectors are not sorted and unique (see entry.Entry.Normalize)")
		}
	}
	return nil
}

// CreateEntries stores new entries in one transaction. An entry with an
// empty ID gets a fresh one; an entry with an ID keeps it, which must then
// have the form entry.NewID makes. Per entry, a duplicate (of a stored
// entry, or of an earlier one in entries) fails with
// datastore.ErrAlreadyExists and an entry the store cannot index with
// entry.ErrInvalid; the others are stored all the same. The caller's
// entries are not modified.
func (s *Store) CreateEntries(ctx context.Context, entries []*entry.Entry) ([]datastore.EntryResult, error) {
	if len(entries) == 0 {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("create entries: %w", err)
		}
		return []datastore.EntryResult{}, nil
	}
	var results []datastore.EntryResult
	err := s.update(ctx, func(w *writer) error {
		results = make([]datastore.EntryResult, len(entries))
		for i, in := range entries {
			if i%256 == 255 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			if err := checkEntry(in); err != nil {
				results[i].Err = err
				continue
			}
			e := in.Clone()
			if e.ID == "" {
				e.ID = entry.NewID()
			} else if _, err := entry.ParseEntryID(e.ID); err != nil {
				results[i].Err = err
				continue
			}
			err := w.insertEntry(e)
			if errors.Is(err, datastore.ErrAlreadyExists) {
				results[i].Err = err
				continue
			}
			if err != nil {
				return err
			}
			results[i].Entry = e
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("create entries: %w", err)
	}
	return results, nil
}

func (w *writer) insertEntry(e *entry.Entry) error {
	if w.entryIDs.Get([]byte(e.ID)) != nil {
		return fmt.Errorf("entry ID %s is taken: %w", e.ID, datastore.ErrAlreadyExists)
	}
	key := e.UniqueKey()
	if other := w.unique.Get(key[:]); other != nil {
		return fmt.Errorf("entry duplicates entry %s (same SPIFFE ID, parent ID and selectors): %w", entry.Printable(string(other)), datastore.ErrAlreadyExists)
	}
	if err := w.logEvent(datastore.EventEntry, e.ID, e); err != nil {
		return err
	}
	return w.putEntry(e, revisionKey(e.Revision), key)
}

// putEntry stores e under seq, and its index keys.
func (w *writer) putEntry(e *entry.Entry, seq []byte, key [sha256.Size]byte) error {
	id := []byte(e.ID)
	// Sequence numbers only grow: pack the pages.
	w.entries.FillPercent = 0.9
	if err := w.entries.Put(seq, encodeEntry(e)); err != nil {
		return err
	}
	if err := w.entryIDs.Put(id, seq); err != nil {
		return err
	}
	if err := w.unique.Put(key[:], id); err != nil {
		return err
	}
	if err := w.bySPIFFEID.Put(indexKey(idPrefix(e.SPIFFEID), seq), indexMark); err != nil {
		return err
	}
	if err := w.byParentID.Put(indexKey(idPrefix(e.ParentID), seq), indexMark); err != nil {
		return err
	}
	for _, sel := range e.Selectors {
		if err := w.bySelector.Put(indexKey(selectorPrefix(sel), seq), indexMark); err != nil {
			return err
		}
	}
	return nil
}

// removeEntry deletes e, stored under seq, and its index keys.
func (w *writer) removeEntry(e *entry.Entry, seq []byte) error {
	key := e.UniqueKey()
	for _, del := range []struct {
		b   *bbolt.Bucket
		key []byte
	}{
		{w.entries, seq},
		{w.entryIDs, []byte(e.ID)},
		{w.unique, key[:]},
		{w.bySPIFFEID, indexKey(idPrefix(e.SPIFFEID), seq)},
		{w.byParentID, indexKey(idPrefix(e.ParentID), seq)},
	} {
		if err := del.b.Delete(del.key); err != nil {
			return err
		}
	}
	for _, sel := range e.Selectors {
		if err := w.bySelector.Delete(indexKey(selectorPrefix(sel), seq)); err != nil {
			return err
		}
	}
	return nil
}

// getEntry returns the entry with this ID and its sequence number.
func (r *reader) getEntry(id string) (*entry.Entry, []byte, error) {
	seq := r.entryIDs.Get([]byte(id))
	if seq == nil {
		return nil, nil, datastore.ErrNotFound
	}
	e, err := r.entryAt(seq)
	if err == nil && e.ID != id {
		err = fmt.Errorf("%w: entry ID %q maps to entry %q", datastore.ErrCorrupt, id, e.ID)
	}
	if err != nil {
		return nil, nil, err
	}
	return e, bytes.Clone(seq), nil
}

// entryAt returns the entry stored under seq.
func (r *reader) entryAt(seq []byte) (*entry.Entry, error) {
	v := r.entries.Get(seq)
	if v == nil || len(seq) != 8 {
		return nil, fmt.Errorf("%w: no entry %x, which an index names", datastore.ErrCorrupt, seq)
	}
	e, err := decodeEntry(v)
	if err != nil {
		return nil, corrupt(fmt.Sprintf("entry %x", seq), err)
	}
	return e, nil
}

// FetchEntry returns the entry with this ID.
func (s *Store) FetchEntry(ctx context.Context, id string) (*entry.Entry, error) {
	var e *entry.Entry
	err := s.view(ctx, func(r *reader) (err error) {
		e, _, err = r.getEntry(id)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("fetch entry: %w", err)
	}
	return e, nil
}

// ListEntries returns the entries that match f, in the order they were
// created. The query
// walks one index, the first of SPIFFE ID, parent ID and f's selectors
// that f sets, and looks the entries it finds up in the indexes of the
// other filters before decoding them.
func (s *Store) ListEntries(ctx context.Context, f datastore.EntryFilter) ([]*entry.Entry, error) {
	var out []*entry.Entry
	err := s.view(ctx, func(r *reader) (err error) {
		out, err = r.listEntries(f)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list entries: %w", err)
	}
	return out, nil
}

func (r *reader) listEntries(f datastore.EntryFilter) ([]*entry.Entry, error) {
	type filter struct {
		b      *bbolt.Bucket
		prefix []byte
	}
	var filters []filter
	if !f.SPIFFEID.IsZero() {
		filters = append(filters, filter{r.bySPIFFEID, idPrefix(f.SPIFFEID)})
	}
	if !f.ParentID.IsZero() {
		filters = append(filters, filter{r.byParentID, idPrefix(f.ParentID)})
	}
	for _, sel := range f.Selectors {
		filters = append(filters, filter{r.bySelector, selectorPrefix(sel)})
	}
	if len(filters) == 0 {
		return r.allEntries()
	}

	var out []*entry.Entry
	var buf []byte
	walk, rest := filters[0], filters[1:]
	c := walk.b.Cursor()
	n := 0
	for k, _ := c.Seek(walk.prefix); k != nil && bytes.HasPrefix(k, walk.prefix); k, _ = c.Next() {
		if n++; n%1024 == 0 {
			if err := r.ctx.Err(); err != nil {
				return nil, err
			}
		}
		seq := k[len(walk.prefix):]
		match := true
		for _, f := range rest {
			buf = append(append(buf[:0], f.prefix...), seq...)
			if f.b.Get(buf) == nil {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		e, err := r.entryAt(seq)
		if err != nil {
			return nil, err
		}
		if !matches(f, e) {
			return nil, fmt.Errorf("%w: the indexes disagree with entry %q", datastore.ErrCorrupt, e.ID)
		}
		out = append(out, e)
	}
	return out, nil
}

func matches(f datastore.EntryFilter, e *entry.Entry) bool {
	return (f.SPIFFEID.IsZero() || f.SPIFFEID == e.SPIFFEID) &&
		(f.ParentID.IsZero() || f.ParentID == e.ParentID) &&
		entry.Match(f.Selectors, e.Selectors)
}

// UpdateEntry atomically reads the entry with this ID, lets fn change a
// copy of it and stores the result with a new revision. fn runs inside
// the write transaction: it must be quick and must not call the store.
// fn's error is returned wrapped, and nothing is written.
func (s *Store) UpdateEntry(ctx context.Context, id string, fn func(*entry.Entry) error) (*entry.Entry, error) {
	var out *entry.Entry
	err := s.update(ctx, func(w *writer) error {
		old, seq, err := w.getEntry(id)
		if err != nil {
			return err
		}
		n := old.Clone()
		if err := fn(n); err != nil {
			return err
		}
		if n.ID != id {
			return invalid("an update may not change the entry's ID")
		}
		if err := checkEntry(n); err != nil {
			return err
		}
		// Nothing of fn's may stay shared with the stored entry.
		n = n.Clone()
		key := n.UniqueKey()
		if other := w.unique.Get(key[:]); other != nil && string(other) != n.ID {
			return fmt.Errorf("entry would duplicate entry %s (same SPIFFE ID, parent ID and selectors): %w", entry.Printable(string(other)), datastore.ErrAlreadyExists)
		}
		if err := w.removeEntry(old, seq); err != nil {
			return err
		}
		if err := w.logEvent(datastore.EventEntry, n.ID, n); err != nil {
			return err
		}
		if err := w.putEntry(n, seq, key); err != nil {
			return err
		}
		out = n.Clone()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("update entry: %w", err)
	}
	return out, nil
}

// DeleteEntry removes the entry and returns it as it was.
func (s *Store) DeleteEntry(ctx context.Context, id string) (*entry.Entry, error) {
	var out *entry.Entry
	err := s.update(ctx, func(w *writer) error {
		old, seq, err := w.getEntry(id)
		if err != nil {
			return err
		}
		if err := w.removeEntry(old, seq); err != nil {
			return err
		}
		if err := w.logEvent(datastore.EventEntry, id, nil); err != nil {
			return err
		}
		out = old
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("delete entry: %w", err)
	}
	return out, nil
}
