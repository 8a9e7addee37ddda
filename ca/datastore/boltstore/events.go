package boltstore

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

// pruneEvents drops the oldest events so that at most keep remain.
// Revisions in the log are contiguous (see keyRevision), so the events to
// drop are exactly pruned+1 .. rev-keep.
func (w *writer) pruneEvents(keep uint64) error {
	pruned, err := w.pruned()
	if err != nil {
		return err
	}
	if w.rev-pruned <= keep {
		return nil
	}
	upTo := w.rev - keep
	for rev := pruned + 1; rev <= upTo; rev++ {
		if err := w.events.Delete(revisionKey(rev)); err != nil {
			return err
		}
	}
	return w.meta.Put(keyPruned, revisionKey(upTo))
}

// PruneEvents drops all but the newest keep events, as writes do beyond
// Options.MaxEvents. Callers asking for dropped events get
// datastore.ErrEventsPruned.
func (s *Store) PruneEvents(ctx context.Context, keep int) error {
	if keep < 0 {
		return fmt.Errorf("prune events: keep is negative")
	}
	err := s.update(ctx, func(w *writer) error { return w.pruneEvents(uint64(keep)) })
	if err != nil {
		return fmt.Errorf("prune events: %w", err)
	}
	return nil
}

// Events returns up to limit events with revisions above after, in
// revision order; a limit of zero or less means no limit. An after
// beyond the latest revision yields no events.
func (s *Store) Events(ctx context.Context, after uint64, limit int) ([]datastore.Event, error) {
	var out []datastore.Event
	err := s.view(ctx, func(r *reader) error {
		pruned, err := r.pruned()
		if err != nil {
			return err
		}
		if after < pruned {
			return fmt.Errorf("events after revision %d: the oldest kept is %d: %w", after, pruned+1, datastore.ErrEventsPruned)
		}
		if after == math.MaxUint64 {
			return nil
		}
		c := r.events.Cursor()
		for k, v := c.Seek(revisionKey(after + 1)); k != nil; k, v = c.Next() {
			if limit > 0 && len(out) >= limit {
				break
			}
			if len(out)%1024 == 1023 {
				if err := r.ctx.Err(); err != nil {
					return err
				}
			}
			if len(k) != 8 {
				return fmt.Errorf("%w: event key %x", datastore.ErrCorrupt, k)
			}
			rev := binary.BigEndian.Uint64(k)
			ev, err := decodeEvent(rev, v)
			if err != nil {
				return corrupt(fmt.Sprintf("event %d", rev), err)
			}
			out = append(out, ev)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	return out, nil
}

// Snapshot returns every entry, in the order they were created, and the revision they are
// current at, read in one transaction.
func (s *Store) Snapshot(ctx context.Context) (*datastore.Snapshot, error) {
	snap := &datastore.Snapshot{}
	err := s.view(ctx, func(r *reader) error {
		var err error
		if snap.Revision, err = r.revision(); err != nil {
			return err
		}
		snap.Entries, err = r.allEntries()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	return snap, nil
}

// allEntries decodes every entry, in the order they were created.
func (r *reader) allEntries() ([]*entry.Entry, error) {
	var out []*entry.Entry
	c := r.entries.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(out)%1024 == 1023 {
			if err := r.ctx.Err(); err != nil {
				return nil, err
			}
		}
		e, err := decodeEntry(v)
		if err != nil {
			return nil, corrupt(fmt.Sprintf("entry %x", k), err)
		}
		out = append(out, e)
	}
	return out, nil
}
