package pgstore

import (
	"context"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

// PruneEvents drops all but the newest keep events, as writes do beyond
// Config.MaxEvents. Callers asking for dropped events get
// datastore.ErrEventsPruned.
func (s *Store) PruneEvents(ctx context.Context, keep int) error {
	if keep < 0 {
		return fmt.Errorf("prune events: keep is negative")
	}
	err := s.write(ctx, func(w *writer) error { return w.pruneEvents(int64(keep)) })
	if err != nil {
		return fmt.Errorf("prune events: %w", err)
	}
	return nil
}

// Events returns up to limit events with revisions above after, in
// revision order; a limit of zero or less means no limit. It reads the
// pruned mark and the events in one statement, so in one snapshot.
func (s *Store) Events(ctx context.Context, after uint64, limit int) ([]datastore.Event, error) {
	var out []datastore.Event
	err := s.call(ctx, func() error {
		if after >= math.MaxInt64 {
			// No revision is that high; but pruning is still checked.
			after = math.MaxInt64
		}
		var lim *int64
		if limit > 0 {
			l := int64(limit)
			lim = &l
		}
		rows, err := s.pool.Query(ctx, `SELECT m.pruned, e.revision, e.kind, e.key, e.entry
			FROM writ_meta m LEFT JOIN LATERAL (
				SELECT revision, kind, key, entry FROM writ_events
				WHERE revision > $1 ORDER BY revision LIMIT $2
			) e ON true
			ORDER BY e.revision`, int64(after), lim)
		if err != nil {
			return err
		}
		var (
			pruned int64
			rev    *int64
			kind   *int16
			key    []byte
			data   []byte
		)
		first := true
		_, err = pgx.ForEachRow(rows, []any{&pruned, &rev, &kind, &key, &data}, func() error {
			if first {
				first = false
				if int64(after) < pruned {
					return fmt.Errorf("events after revision %d: the oldest kept is %d: %w", after, pruned+1, datastore.ErrEventsPruned)
				}
			}
			if rev == nil {
				return nil
			}
			ev := datastore.Event{Revision: uint64(*rev), Kind: datastore.EventKind(*kind), Key: string(key)}
			switch {
			case ev.Kind == datastore.EventEntry && data != nil:
				e, err := decodeEntryRecord(ev.Key, data)
				if err != nil {
					return corrupt(fmt.Sprintf("event %d", ev.Revision), err)
				}
				ev.Entry = e
			case ev.Kind != datastore.EventEntry && ev.Kind != datastore.EventAgent && ev.Kind != datastore.EventBundle && ev.Kind != datastore.EventRevocation:
				return fmt.Errorf("%w: event %d has unknown kind %d", datastore.ErrCorrupt, ev.Revision, ev.Kind)
			}
			out = append(out, ev)
			return nil
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	return out, nil
}

// Snapshot returns every entry, in the order they were created, and the
// revision they are current at, read in one repeatable-read transaction.
func (s *Store) Snapshot(ctx context.Context) (*datastore.Snapshot, error) {
	snap := &datastore.Snapshot{}
	err := s.readTx(ctx, func(tx pgx.Tx) error {
		var rev int64
		if err := tx.QueryRow(ctx, "SELECT revision FROM writ_meta").Scan(&rev); err != nil {
			return err
		}
		snap.Revision = uint64(rev)
		var err error
		snap.Entries, err = queryEntries(ctx, tx, "SELECT id, data FROM writ_entries ORDER BY seq")
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	if snap.Entries == nil {
		snap.Entries = []*entry.Entry{}
	}
	return snap, nil
}
