package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

// checkEntry checks what the store itself relies on, as boltstore does:
// IDs present and not too long, selectors sorted and unique (without
// which duplicates would go unnoticed), and strings it can store exactly.
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
	if !validUTF8(e) {
		return invalid("entry has a string that is not valid UTF-8")
	}
	return nil
}

// entryRow is the writ_entries row of e, in the column order of
// entryColumns.
func entryRow(e *entry.Entry, seq int64) []any {
	key := e.UniqueKey()
	return []any{
		[]byte(e.ID), seq, int64(e.Revision), []byte(e.SPIFFEID.String()), []byte(e.ParentID.String()),
		selectorKeys(e.Selectors), key[:], encodeEntry(e),
	}
}

var entryColumns = []string{"id", "seq", "revision", "spiffe_id", "parent_id", "selectors", "unique_key", "data"}

// CreateEntries stores new entries in one transaction, in two round
// trips for the batch: one looks up the IDs and keys already taken, and
// COPY writes the entries and their events. Per entry, a duplicate (of a
// stored entry, or of an earlier one in entries) fails with
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
	results := make([]datastore.EntryResult, len(entries))
	var candidates []*entry.Entry
	var idx []int
	for i, in := range entries {
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
		candidates = append(candidates, e)
		idx = append(idx, i)
	}
	if len(candidates) == 0 {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("create entries: %w", err)
		}
		return results, nil
	}
	ids := make([][]byte, len(candidates))
	keys := make([][]byte, len(candidates))
	for i, e := range candidates {
		k := e.UniqueKey()
		ids[i], keys[i] = []byte(e.ID), k[:]
	}
	var stored []datastore.EntryResult
	err := s.write(ctx, func(w *writer) error {
		stored = make([]datastore.EntryResult, len(candidates))
		if err := w.lock(); err != nil {
			return err
		}
		// Entry writers hold the meta lock, so what is taken cannot
		// change before this transaction commits.
		takenIDs := map[string]bool{}
		takenKeys := map[string]string{}
		rows, err := w.tx.Query(ctx, "SELECT id, unique_key FROM writ_entries WHERE id = ANY($1) OR unique_key = ANY($2)", ids, keys)
		if err != nil {
			return err
		}
		var id, key []byte
		_, err = pgx.ForEachRow(rows, []any{&id, &key}, func() error {
			takenIDs[string(id)] = true
			takenKeys[string(key)] = string(id)
			return nil
		})
		if err != nil {
			return err
		}
		var entryRows, eventRows [][]any
		for i, e := range candidates {
			if takenIDs[e.ID] {
				stored[i].Err = fmt.Errorf("entry ID %s is taken: %w", e.ID, datastore.ErrAlreadyExists)
				continue
			}
			if other, ok := takenKeys[string(keys[i])]; ok {
				stored[i].Err = fmt.Errorf("entry duplicates entry %s (same SPIFFE ID, parent ID and selectors): %w", entry.Printable(other), datastore.ErrAlreadyExists)
				continue
			}
			takenIDs[e.ID] = true
			takenKeys[string(keys[i])] = e.ID
			w.rev++
			e.Revision = uint64(w.rev)
			row := entryRow(e, w.rev)
			entryRows = append(entryRows, row)
			eventRows = append(eventRows, []any{w.rev, int16(datastore.EventEntry), []byte(e.ID), row[len(row)-1]})
			stored[i].Entry = e
		}
		if len(entryRows) == 0 {
			return nil
		}
		if _, err := w.tx.CopyFrom(ctx, pgx.Identifier{"writ_entries"}, entryColumns, pgx.CopyFromRows(entryRows)); err != nil {
			return err
		}
		w.events = append(w.events, eventRows...)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("create entries: %w", err)
	}
	for i, r := range stored {
		results[idx[i]] = r
	}
	return results, nil
}

// FetchEntry returns the entry with this ID.
func (s *Store) FetchEntry(ctx context.Context, id string) (*entry.Entry, error) {
	var data []byte
	err := s.call(ctx, func() error {
		return s.pool.QueryRow(ctx, "SELECT data FROM writ_entries WHERE id = $1", []byte(id)).Scan(&data)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		err = datastore.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("fetch entry: %w", err)
	}
	e, err := decodeEntryRecord(id, data)
	if err != nil {
		return nil, fmt.Errorf("fetch entry: %w", err)
	}
	return e, nil
}

func decodeEntryRecord(id string, data []byte) (*entry.Entry, error) {
	e, err := decodeEntry(data)
	if err == nil && e.ID != id {
		err = fmt.Errorf("%w: stored under another ID", errDecode)
	}
	if err != nil {
		return nil, corrupt(fmt.Sprintf("entry %q", entry.Printable(id)), err)
	}
	return e, nil
}

// ListEntries returns the entries that match f, in the order they were
// created.
func (s *Store) ListEntries(ctx context.Context, f datastore.EntryFilter) ([]*entry.Entry, error) {
	var conds []string
	var args []any
	if !f.SPIFFEID.IsZero() {
		args = append(args, []byte(f.SPIFFEID.String()))
		conds = append(conds, fmt.Sprintf("spiffe_id = $%d", len(args)))
	}
	if !f.ParentID.IsZero() {
		args = append(args, []byte(f.ParentID.String()))
		conds = append(conds, fmt.Sprintf("parent_id = $%d", len(args)))
	}
	if len(f.Selectors) > 0 {
		args = append(args, selectorKeys(f.Selectors))
		conds = append(conds, fmt.Sprintf("selectors @> $%d", len(args)))
	}
	q := "SELECT id, data FROM writ_entries"
	if len(conds) > 0 {
		q += " WHERE " + strings.Join(conds, " AND ")
	}
	q += " ORDER BY seq"
	var out []*entry.Entry
	err := s.call(ctx, func() (err error) {
		out, err = queryEntries(ctx, s.pool, q, args...)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list entries: %w", err)
	}
	return out, nil
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// queryEntries decodes rows of (id, data).
func queryEntries(ctx context.Context, q querier, sql string, args ...any) ([]*entry.Entry, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	var out []*entry.Entry
	var id, data []byte
	_, err = pgx.ForEachRow(rows, []any{&id, &data}, func() error {
		e, err := decodeEntryRecord(string(id), data)
		if err != nil {
			return err
		}
		out = append(out, e)
		return nil
	})
	return out, err
}

// UpdateEntry atomically reads the entry with this ID, lets fn change a
// copy of it and stores the result with a new revision. fn runs inside
// the transaction, holding the lock every writer of events takes: it must
// be quick and must not call the store. fn's error is returned wrapped,
// and nothing is written.
func (s *Store) UpdateEntry(ctx context.Context, id string, fn func(*entry.Entry) error) (*entry.Entry, error) {
	var out *entry.Entry
	err := s.write(ctx, func(w *writer) error {
		if err := w.lock(); err != nil {
			return err
		}
		var seq int64
		var data []byte
		err := w.tx.QueryRow(ctx, "SELECT seq, data FROM writ_entries WHERE id = $1 FOR UPDATE", []byte(id)).Scan(&seq, &data)
		if errors.Is(err, pgx.ErrNoRows) {
			return datastore.ErrNotFound
		}
		if err != nil {
			return err
		}
		old, err := decodeEntryRecord(id, data)
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
		n = n.Clone()
		key := n.UniqueKey()
		var other []byte
		err = w.tx.QueryRow(ctx, "SELECT id FROM writ_entries WHERE unique_key = $1 AND id <> $2", key[:], []byte(id)).Scan(&other)
		if err == nil {
			return fmt.Errorf("entry would duplicate entry %s (same SPIFFE ID, parent ID and selectors): %w", entry.Printable(string(other)), datastore.ErrAlreadyExists)
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		w.rev++
		n.Revision = uint64(w.rev)
		row := entryRow(n, seq)
		_, err = w.tx.Exec(ctx, `UPDATE writ_entries SET revision = $2, spiffe_id = $3, parent_id = $4,
			selectors = $5, unique_key = $6, data = $7 WHERE id = $1`, row[0], row[2], row[3], row[4], row[5], row[6], row[7])
		if err != nil {
			return err
		}
		w.events = append(w.events, []any{w.rev, int16(datastore.EventEntry), []byte(id), row[7]})
		out = n
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("update entry: %w", err)
	}
	return out.Clone(), nil
}

// DeleteEntry removes the entry and returns it as it was.
func (s *Store) DeleteEntry(ctx context.Context, id string) (*entry.Entry, error) {
	var out *entry.Entry
	err := s.write(ctx, func(w *writer) error {
		if err := w.lock(); err != nil {
			return err
		}
		var data []byte
		err := w.tx.QueryRow(ctx, "DELETE FROM writ_entries WHERE id = $1 RETURNING data", []byte(id)).Scan(&data)
		if errors.Is(err, pgx.ErrNoRows) {
			return datastore.ErrNotFound
		}
		if err != nil {
			return err
		}
		if out, err = decodeEntryRecord(id, data); err != nil {
			return err
		}
		w.logEvent(datastore.EventEntry, []byte(id), nil)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("delete entry: %w", err)
	}
	return out, nil
}
