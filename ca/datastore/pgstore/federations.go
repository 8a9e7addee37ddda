package pgstore

import (
	"context"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

// PutFederation creates or replaces a federation relationship.
func (s *Store) PutFederation(ctx context.Context, r *datastore.Federation) error {
	if err := datastore.CheckFederation(r); err != nil {
		return fmt.Errorf("put federation: %w", err)
	}
	err := s.write(ctx, func(w *writer) error {
		_, err := w.tx.Exec(ctx, `INSERT INTO writ_federations (trust_domain, data) VALUES ($1, $2)
			ON CONFLICT (trust_domain) DO UPDATE SET data = EXCLUDED.data`, []byte(r.TrustDomain.Name()), datastore.EncodeFederation(r))
		w.changed = true
		return err
	})
	if err != nil {
		return fmt.Errorf("put federation: %w", err)
	}
	return nil
}

// ListFederations returns every relationship, in trust domain order.
func (s *Store) ListFederations(ctx context.Context) ([]*datastore.Federation, error) {
	var out []*datastore.Federation
	err := s.listRows(ctx, "SELECT trust_domain, data FROM writ_federations ORDER BY trust_domain", func(td, data []byte) error {
		f, err := datastore.DecodeFederation(data)
		if err == nil && f.TrustDomain.Name() != string(td) {
			err = fmt.Errorf("%w: stored under another trust domain", errDecode)
		}
		if err != nil {
			return corrupt(fmt.Sprintf("federation %q", entry.Printable(string(td))), err)
		}
		out = append(out, f)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list federations: %w", err)
	}
	return out, nil
}

// DeleteFederation removes the relationship with td.
func (s *Store) DeleteFederation(ctx context.Context, td spiffeid.TrustDomain) error {
	err := s.write(ctx, func(w *writer) error {
		tag, err := w.tx.Exec(ctx, "DELETE FROM writ_federations WHERE trust_domain = $1", []byte(td.Name()))
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return datastore.ErrNotFound
		}
		w.changed = true
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete federation: %w", err)
	}
	return nil
}
