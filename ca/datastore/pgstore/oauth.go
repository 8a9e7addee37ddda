package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

// PutOAuthClient creates or replaces the OAuth client c.SPIFFEID.
func (s *Store) PutOAuthClient(ctx context.Context, c *datastore.OAuthClient) error {
	if err := datastore.CheckOAuthClient(c); err != nil {
		return fmt.Errorf("put oauth client: %w", err)
	}
	err := s.write(ctx, func(w *writer) error {
		_, err := w.tx.Exec(ctx, `INSERT INTO writ_oauth_clients (spiffe_id, data) VALUES ($1, $2)
			ON CONFLICT (spiffe_id) DO UPDATE SET data = EXCLUDED.data`, []byte(c.SPIFFEID.String()), datastore.EncodeOAuthClient(c))
		w.changed = true
		return err
	})
	if err != nil {
		return fmt.Errorf("put oauth client: %w", err)
	}
	return nil
}

func decodeOAuthClient(k, v []byte) (*datastore.OAuthClient, error) {
	c, err := datastore.DecodeOAuthClient(v)
	if err == nil && c.SPIFFEID.String() != string(k) {
		err = fmt.Errorf("%w: stored under another SPIFFE ID", errDecode)
	}
	if err != nil {
		return nil, corrupt(fmt.Sprintf("oauth client %q", entry.Printable(string(k))), err)
	}
	return c, nil
}

// FetchOAuthClient returns the OAuth client id.
func (s *Store) FetchOAuthClient(ctx context.Context, id spiffeid.ID) (*datastore.OAuthClient, error) {
	var data []byte
	err := s.call(ctx, func() error {
		if id.IsZero() {
			return datastore.ErrNotFound
		}
		return s.pool.QueryRow(ctx, "SELECT data FROM writ_oauth_clients WHERE spiffe_id = $1", []byte(id.String())).Scan(&data)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		err = datastore.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("fetch oauth client: %w", err)
	}
	c, err := decodeOAuthClient([]byte(id.String()), data)
	if err != nil {
		return nil, fmt.Errorf("fetch oauth client: %w", err)
	}
	return c, nil
}

// ListOAuthClients returns every OAuth client, in SPIFFE ID order.
func (s *Store) ListOAuthClients(ctx context.Context) ([]*datastore.OAuthClient, error) {
	var out []*datastore.OAuthClient
	err := s.listRows(ctx, "SELECT spiffe_id, data FROM writ_oauth_clients ORDER BY spiffe_id", func(k, data []byte) error {
		c, err := decodeOAuthClient(k, data)
		if err != nil {
			return err
		}
		out = append(out, c)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list oauth clients: %w", err)
	}
	return out, nil
}

// DeleteOAuthClient removes the OAuth client id.
func (s *Store) DeleteOAuthClient(ctx context.Context, id spiffeid.ID) error {
	err := s.write(ctx, func(w *writer) error {
		if id.IsZero() {
			return datastore.ErrNotFound
		}
		tag, err := w.tx.Exec(ctx, "DELETE FROM writ_oauth_clients WHERE spiffe_id = $1", []byte(id.String()))
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
		return fmt.Errorf("delete oauth client: %w", err)
	}
	return nil
}

// UseClientAssertion records the assertion hash until expiresAt. Of
// concurrent callers with one hash, through any number of Stores, exactly
// one succeeds: the primary key lets one INSERT in. Errors never include
// the hash.
func (s *Store) UseClientAssertion(ctx context.Context, hash string, expiresAt time.Time) error {
	if hash == "" || len(hash) > maxKeyLength {
		return fmt.Errorf("use client assertion: %w", invalid("assertion hash is empty or longer than %d bytes", maxKeyLength))
	}
	err := s.call(ctx, func() error {
		tag, err := s.pool.Exec(ctx, "INSERT INTO writ_client_assertions (hash, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
			[]byte(hash), unixNanos(expiresAt))
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return datastore.ErrAlreadyExists
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("use client assertion: %w", err)
	}
	return nil
}

// PruneClientAssertions forgets the assertions whose expiry is not after
// now and returns how many.
func (s *Store) PruneClientAssertions(ctx context.Context, now time.Time) (int, error) {
	var n int
	err := s.call(ctx, func() error {
		tag, err := s.pool.Exec(ctx, "DELETE FROM writ_client_assertions WHERE expires_at <= $1", unixNanos(now))
		n = int(tag.RowsAffected())
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("prune client assertions: %w", err)
	}
	return n, nil
}

// PutRevocation stores r under datastore.RevocationKey(r), replacing
// what was there, and logs an EventRevocation.
func (s *Store) PutRevocation(ctx context.Context, r *datastore.Revocation) error {
	if err := datastore.CheckRevocation(r); err != nil {
		return fmt.Errorf("put revocation: %w", err)
	}
	key := []byte(datastore.RevocationKey(r))
	if len(key) > maxKeyLength {
		return fmt.Errorf("put revocation: %w", invalid("revocation key is longer than %d bytes", maxKeyLength))
	}
	err := s.write(ctx, func(w *writer) error {
		if err := w.lock(); err != nil {
			return err
		}
		_, err := w.tx.Exec(ctx, `INSERT INTO writ_revocations (key, expires_at, data) VALUES ($1, $2, $3)
			ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at, data = EXCLUDED.data`,
			key, unixNanos(r.ExpiresAt), datastore.EncodeRevocation(r))
		if err != nil {
			return err
		}
		w.logEvent(datastore.EventRevocation, key, nil)
		return nil
	})
	if err != nil {
		return fmt.Errorf("put revocation: %w", err)
	}
	return nil
}

// ListRevocations returns the revocations whose ExpiresAt is after now,
// in key order.
func (s *Store) ListRevocations(ctx context.Context, now time.Time) ([]*datastore.Revocation, error) {
	var out []*datastore.Revocation
	err := s.call(ctx, func() error {
		rows, err := s.pool.Query(ctx, "SELECT key, data FROM writ_revocations WHERE expires_at > $1 ORDER BY key", unixNanos(now))
		if err != nil {
			return err
		}
		var key, data []byte
		_, err = pgx.ForEachRow(rows, []any{&key, &data}, func() error {
			r, err := datastore.DecodeRevocation(data)
			if err == nil && datastore.RevocationKey(r) != string(key) {
				err = fmt.Errorf("%w: stored under another key", errDecode)
			}
			if err != nil {
				return corrupt("revocation", err)
			}
			out = append(out, r)
			return nil
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list revocations: %w", err)
	}
	return out, nil
}

// PruneRevocations removes the revocations whose ExpiresAt is not after
// now and returns how many.
func (s *Store) PruneRevocations(ctx context.Context, now time.Time) (int, error) {
	var n int
	err := s.call(ctx, func() error {
		tag, err := s.pool.Exec(ctx, "DELETE FROM writ_revocations WHERE expires_at <= $1", unixNanos(now))
		n = int(tag.RowsAffected())
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("prune revocations: %w", err)
	}
	return n, nil
}
