package boltstore

import (
	"context"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
)

// errNoFederationsBucket is returned if the federations bucket is missing
// from an open store; Open creates it, so only damage removes it.
var errNoFederationsBucket = fmt.Errorf("%w: bucket %q is missing", datastore.ErrCorrupt, bucketFederations)

// PutFederation creates or replaces a federation relationship. It wakes
// the watchers, so that every part of the server that follows the store
// sees it.
func (s *Store) PutFederation(ctx context.Context, r *datastore.Federation) error {
	if err := datastore.CheckFederation(r); err != nil {
		return fmt.Errorf("put federation: %w", err)
	}
	err := s.update(ctx, func(w *writer) error {
		if w.federations == nil {
			return errNoFederationsBucket
		}
		w.changed = true
		return w.federations.Put([]byte(r.TrustDomain.Name()), datastore.EncodeFederation(r))
	})
	if err != nil {
		return fmt.Errorf("put federation: %w", err)
	}
	return nil
}

// ListFederations returns every relationship, in trust domain order.
func (s *Store) ListFederations(ctx context.Context) ([]*datastore.Federation, error) {
	var out []*datastore.Federation
	err := s.view(ctx, func(r *reader) error {
		if r.federations == nil {
			return errNoFederationsBucket
		}
		return r.federations.ForEach(func(k, v []byte) error {
			f, err := datastore.DecodeFederation(v)
			if err == nil && f.TrustDomain.Name() != string(k) {
				err = fmt.Errorf("%w: stored under another trust domain", errDecode)
			}
			if err != nil {
				return corrupt(fmt.Sprintf("federation %q", k), err)
			}
			out = append(out, f)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list federations: %w", err)
	}
	return out, nil
}

// DeleteFederation removes the relationship with td.
func (s *Store) DeleteFederation(ctx context.Context, td spiffeid.TrustDomain) error {
	err := s.update(ctx, func(w *writer) error {
		if w.federations == nil {
			return errNoFederationsBucket
		}
		key := []byte(td.Name())
		if td.IsZero() || w.federations.Get(key) == nil {
			return datastore.ErrNotFound
		}
		w.changed = true
		return w.federations.Delete(key)
	})
	if err != nil {
		return fmt.Errorf("delete federation: %w", err)
	}
	return nil
}
