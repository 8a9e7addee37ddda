package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
)

// errNoOAuthBuckets is returned if an OAuth bucket is missing from an
// open store; Open creates them, so only damage removes one.
var errNoOAuthBuckets = fmt.Errorf("%w: an OAuth bucket is missing", datastore.ErrCorrupt)

func (r *reader) oauthOK() error {
	if r.oauthClients == nil || r.clientAssertions == nil || r.revocations == nil {
		return errNoOAuthBuckets
	}
	return nil
}

// PutOAuthClient creates or replaces the OAuth client c.SPIFFEID.
func (s *Store) PutOAuthClient(ctx context.Context, c *datastore.OAuthClient) error {
	if err := datastore.CheckOAuthClient(c); err != nil {
		return fmt.Errorf("put oauth client: %w", err)
	}
	err := s.update(ctx, func(w *writer) error {
		if err := w.oauthOK(); err != nil {
			return err
		}
		w.changed = true
		return w.oauthClients.Put([]byte(c.SPIFFEID.String()), datastore.EncodeOAuthClient(c))
	})
	if err != nil {
		return fmt.Errorf("put oauth client: %w", err)
	}
	return nil
}

// FetchOAuthClient returns the OAuth client id.
func (s *Store) FetchOAuthClient(ctx context.Context, id spiffeid.ID) (*datastore.OAuthClient, error) {
	var c *datastore.OAuthClient
	err := s.view(ctx, func(r *reader) error {
		if err := r.oauthOK(); err != nil {
			return err
		}
		if id.IsZero() {
			return datastore.ErrNotFound
		}
		v := r.oauthClients.Get([]byte(id.String()))
		if v == nil {
			return datastore.ErrNotFound
		}
		var err error
		c, err = decodeOAuthClient([]byte(id.String()), v)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("fetch oauth client: %w", err)
	}
	return c, nil
}

func decodeOAuthClient(k, v []byte) (*datastore.OAuthClient, error) {
	c, err := datastore.DecodeOAuthClient(v)
	if err == nil && c.SPIFFEID.String() != string(k) {
		err = fmt.Errorf("%w: stored under another SPIFFE ID", errDecode)
	}
	if err != nil {
		return nil, corrupt(fmt.Sprintf("oauth client %q", k), err)
	}
	return c, nil
}

// ListOAuthClients returns every OAuth client, in SPIFFE ID order.
func (s *Store) ListOAuthClients(ctx context.Context) ([]*datastore.OAuthClient, error) {
	var out []*datastore.OAuthClient
	err := s.view(ctx, func(r *reader) error {
		if err := r.oauthOK(); err != nil {
			return err
		}
		return r.oauthClients.ForEach(func(k, v []byte) error {
			c, err := decodeOAuthClient(k, v)
			if err != nil {
				return err
			}
			out = append(out, c)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list oauth clients: %w", err)
	}
	return out, nil
}

// DeleteOAuthClient removes the OAuth client id.
func (s *Store) DeleteOAuthClient(ctx context.Context, id spiffeid.ID) error {
	err := s.update(ctx, func(w *writer) error {
		if err := w.oauthOK(); err != nil {
			return err
		}
		key := []byte(id.String())
		if id.IsZero() || w.oauthClients.Get(key) == nil {
			return datastore.ErrNotFound
		}
		w.changed = true
		return w.oauthClients.Delete(key)
	})
	if err != nil {
		return fmt.Errorf("delete oauth client: %w", err)
	}
	return nil
}

// UseClientAssertion records the assertion hash until expiresAt. Of
// concurrent callers with one hash exactly one succeeds: bbolt runs one
// write transaction at a time. Errors never include the hash.
func (s *Store) UseClientAssertion(ctx context.Context, hash string, expiresAt time.Time) error {
	if hash == "" || len(hash) > maxKeyLength {
		return fmt.Errorf("use client assertion: %w", invalid("assertion hash is empty or longer than %d bytes", maxKeyLength))
	}
	err := s.update(ctx, func(w *writer) error {
		if err := w.oauthOK(); err != nil {
			return err
		}
		key := []byte(hash)
		if w.clientAssertions.Get(key) != nil {
			return datastore.ErrAlreadyExists
		}
		return w.clientAssertions.Put(key, binary.BigEndian.AppendUint64(nil, uint64(expiresAt.UnixNano())))
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
	err := s.update(ctx, func(w *writer) error {
		if err := w.oauthOK(); err != nil {
			return err
		}
		var expired [][]byte
		err := w.clientAssertions.ForEach(func(k, v []byte) error {
			if len(v) != 8 {
				return fmt.Errorf("%w: client assertion record of %d bytes", datastore.ErrCorrupt, len(v))
			}
			if int64(binary.BigEndian.Uint64(v)) <= now.UnixNano() {
				expired = append(expired, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range expired {
			if err := w.clientAssertions.Delete(k); err != nil {
				return err
			}
		}
		n = len(expired)
		return nil
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
	key := datastore.RevocationKey(r)
	if len(key) > maxKeyLength {
		return fmt.Errorf("put revocation: %w", invalid("revocation key is longer than %d bytes", maxKeyLength))
	}
	err := s.update(ctx, func(w *writer) error {
		if err := w.oauthOK(); err != nil {
			return err
		}
		if err := w.revocations.Put([]byte(key), datastore.EncodeRevocation(r)); err != nil {
			return err
		}
		return w.logEvent(datastore.EventRevocation, key, nil)
	})
	if err != nil {
		return fmt.Errorf("put revocation: %w", err)
	}
	return nil
}

func decodeRevocation(k, v []byte) (*datastore.Revocation, error) {
	r, err := datastore.DecodeRevocation(v)
	if err == nil && datastore.RevocationKey(r) != string(k) {
		err = fmt.Errorf("%w: stored under another key", errDecode)
	}
	if err != nil {
		return nil, corrupt("revocation", err)
	}
	return r, nil
}

// ListRevocations returns the revocations whose ExpiresAt is after now,
// in key order.
func (s *Store) ListRevocations(ctx context.Context, now time.Time) ([]*datastore.Revocation, error) {
	var out []*datastore.Revocation
	err := s.view(ctx, func(r *reader) error {
		if err := r.oauthOK(); err != nil {
			return err
		}
		return r.revocations.ForEach(func(k, v []byte) error {
			rev, err := decodeRevocation(k, v)
			if err != nil {
				return err
			}
			if rev.ExpiresAt.After(now) {
				out = append(out, rev)
			}
			return nil
		})
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
	err := s.update(ctx, func(w *writer) error {
		if err := w.oauthOK(); err != nil {
			return err
		}
		var expired [][]byte
		err := w.revocations.ForEach(func(k, v []byte) error {
			rev, err := decodeRevocation(k, v)
			if err != nil {
				return err
			}
			if !rev.ExpiresAt.After(now) {
				expired = append(expired, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range expired {
			if err := w.revocations.Delete(k); err != nil {
				return err
			}
		}
		n = len(expired)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("prune revocations: %w", err)
	}
	return n, nil
}

// verifyOAuth checks that the OAuth records decode, for Open.
func (r *reader) verifyOAuth() error {
	if r.oauthClients != nil {
		if err := r.oauthClients.ForEach(func(k, v []byte) error {
			_, err := decodeOAuthClient(k, v)
			return err
		}); err != nil {
			return err
		}
	}
	if r.clientAssertions != nil {
		if err := r.clientAssertions.ForEach(func(_, v []byte) error {
			if len(v) != 8 {
				return fmt.Errorf("client assertion record of %d bytes", len(v))
			}
			return nil
		}); err != nil {
			return err
		}
	}
	if r.revocations != nil {
		return r.revocations.ForEach(func(k, v []byte) error {
			_, err := decodeRevocation(k, v)
			return err
		})
	}
	return nil
}
