package boltstore

import (
	"context"
	"fmt"
	"io"

	"go.etcd.io/bbolt"

	"writ.dev/writ/ca/datastore"
)

// Backup writes a consistent copy of the whole database file to w, taken
// in one read transaction (writers are not paused), and returns the CA key
// records that copy holds, so that the caller can save the private keys
// they name beside it. The copy is a bbolt file that Open accepts.
func (s *Store) Backup(ctx context.Context, w io.Writer) ([]*datastore.CAKey, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var keys []*datastore.CAKey
	err := s.db.View(func(tx *bbolt.Tx) error {
		r, err := newReader(ctx, tx)
		if err != nil {
			return err
		}
		if err := r.caKeys.ForEach(func(k, v []byte) error {
			key, err := decodeCAKey(v)
			if err != nil {
				return corrupt(fmt.Sprintf("CA key %q", k), err)
			}
			keys = append(keys, key)
			return nil
		}); err != nil {
			return err
		}
		_, err = tx.WriteTo(w)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	return keys, nil
}
