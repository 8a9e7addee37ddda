package pgstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"

	"writ.dev/writ/internal/logkey"
)

// maxKeyLength bounds the caller-chosen keys of join tokens, CA keys and
// servers, as in boltstore.
const maxKeyLength = 1024

// Agents, keyed by SPIFFE ID.

func checkAgent(a *datastore.Agent) error {
	if a == nil || a.SPIFFEID.IsZero() {
		return invalid("agent has no SPIFFE ID")
	}
	if len(a.SPIFFEID.String()) > entry.MaxIDLength {
		return invalid("agent SPIFFE ID is longer than %d bytes", entry.MaxIDLength)
	}
	return checkAgentStrings(a)
}

// CreateAgent stores a new agent (datastore.ErrAlreadyExists if one with
// its SPIFFE ID exists).
func (s *Store) CreateAgent(ctx context.Context, a *datastore.Agent) error {
	if err := checkAgent(a); err != nil {
		return fmt.Errorf("create agent: %w", err)
	}
	key := []byte(a.SPIFFEID.String())
	err := s.write(ctx, func(w *writer) error {
		if err := w.lock(); err != nil {
			return err
		}
		tag, err := w.tx.Exec(ctx, "INSERT INTO writ_agents (spiffe_id, data) VALUES ($1, $2) ON CONFLICT DO NOTHING", key, encodeAgent(a))
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return datastore.ErrAlreadyExists
		}
		w.logEvent(datastore.EventAgent, key, nil)
		return nil
	})
	if err != nil {
		return fmt.Errorf("create agent: %w", err)
	}
	return nil
}

func decodeAgentRecord(key, data []byte) (*datastore.Agent, error) {
	a, err := decodeAgent(data)
	if err == nil && a.SPIFFEID.String() != string(key) {
		err = fmt.Errorf("%w: stored under another SPIFFE ID", errDecode)
	}
	if err != nil {
		return nil, corrupt(fmt.Sprintf("agent %q", entry.Printable(string(key))), err)
	}
	return a, nil
}

// FetchAgent returns the agent with this SPIFFE ID.
func (s *Store) FetchAgent(ctx context.Context, id spiffeid.ID) (*datastore.Agent, error) {
	key := []byte(id.String())
	var data []byte
	err := s.call(ctx, func() error {
		if id.IsZero() {
			return datastore.ErrNotFound
		}
		return s.pool.QueryRow(ctx, "SELECT data FROM writ_agents WHERE spiffe_id = $1", key).Scan(&data)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		err = datastore.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("fetch agent: %w", err)
	}
	a, err := decodeAgentRecord(key, data)
	if err != nil {
		return nil, fmt.Errorf("fetch agent: %w", err)
	}
	return a, nil
}

// ListAgents returns every agent, in SPIFFE ID order.
func (s *Store) ListAgents(ctx context.Context) ([]*datastore.Agent, error) {
	var out []*datastore.Agent
	err := s.listRows(ctx, "SELECT spiffe_id, data FROM writ_agents ORDER BY spiffe_id", func(key, data []byte) error {
		a, err := decodeAgentRecord(key, data)
		if err != nil {
			return err
		}
		out = append(out, a)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	return out, nil
}

// UpdateAgent atomically reads the agent, lets fn change it and stores
// the result (datastore.ErrNotFound if there is no such agent). fn runs
// inside the transaction, with the agent's row locked: it must be quick
// and must not call the store.
func (s *Store) UpdateAgent(ctx context.Context, id spiffeid.ID, fn func(*datastore.Agent) error) (*datastore.Agent, error) {
	key := []byte(id.String())
	var out *datastore.Agent
	err := s.write(ctx, func(w *writer) error {
		if id.IsZero() {
			return datastore.ErrNotFound
		}
		if err := w.lock(); err != nil {
			return err
		}
		var data []byte
		err := w.tx.QueryRow(ctx, "SELECT data FROM writ_agents WHERE spiffe_id = $1 FOR UPDATE", key).Scan(&data)
		if errors.Is(err, pgx.ErrNoRows) {
			return datastore.ErrNotFound
		}
		if err != nil {
			return err
		}
		a, err := decodeAgentRecord(key, data)
		if err != nil {
			return err
		}
		if err := fn(a); err != nil {
			return err
		}
		if a.SPIFFEID != id {
			return invalid("an update may not change the agent's SPIFFE ID")
		}
		if err := checkAgent(a); err != nil {
			return err
		}
		if _, err := w.tx.Exec(ctx, "UPDATE writ_agents SET data = $2 WHERE spiffe_id = $1", key, encodeAgent(a)); err != nil {
			return err
		}
		out = a
		w.logEvent(datastore.EventAgent, key, nil)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("update agent: %w", err)
	}
	c := *out
	return &c, nil
}

// DeleteAgent removes the agent (datastore.ErrNotFound if none) and
// returns it as it was.
func (s *Store) DeleteAgent(ctx context.Context, id spiffeid.ID) (*datastore.Agent, error) {
	key := []byte(id.String())
	var old *datastore.Agent
	err := s.write(ctx, func(w *writer) error {
		if id.IsZero() {
			return datastore.ErrNotFound
		}
		if err := w.lock(); err != nil {
			return err
		}
		var data []byte
		err := w.tx.QueryRow(ctx, "DELETE FROM writ_agents WHERE spiffe_id = $1 RETURNING data", key).Scan(&data)
		if errors.Is(err, pgx.ErrNoRows) {
			return datastore.ErrNotFound
		}
		if err != nil {
			return err
		}
		if old, err = decodeAgentRecord(key, data); err != nil {
			return err
		}
		w.logEvent(datastore.EventAgent, key, nil)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("delete agent: %w", err)
	}
	return old, nil
}

// Join tokens, keyed by hash. Errors never include the hash.

// CreateJoinToken stores a token by its hash (datastore.ErrAlreadyExists
// on a repeated hash).
func (s *Store) CreateJoinToken(ctx context.Context, t *datastore.JoinToken) error {
	if t == nil || t.Hash == "" || len(t.Hash) > maxKeyLength {
		return fmt.Errorf("create join token: %w", invalid("join token hash is empty or longer than %d bytes", maxKeyLength))
	}
	err := s.write(ctx, func(w *writer) error {
		tag, err := w.tx.Exec(ctx, "INSERT INTO writ_join_tokens (hash, expires_at, data) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
			[]byte(t.Hash), unixNanos(t.ExpiresAt), encodeJoinToken(t))
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return datastore.ErrAlreadyExists
		}
		w.changed = true
		return nil
	})
	if err != nil {
		return fmt.Errorf("create join token: %w", err)
	}
	return nil
}

// ConsumeJoinToken removes the token with this hash and returns it. Of
// concurrent callers, through any number of Stores, exactly one gets it:
// one DELETE removes the row and returns it, and PostgreSQL lets one
// transaction delete a row. A token whose ExpiresAt is not after now is
// removed and datastore.ErrExpired returned.
func (s *Store) ConsumeJoinToken(ctx context.Context, hash string, now time.Time) (*datastore.JoinToken, error) {
	var t *datastore.JoinToken
	err := s.write(ctx, func(w *writer) error {
		if hash == "" {
			return datastore.ErrNotFound
		}
		var data []byte
		err := w.tx.QueryRow(ctx, "DELETE FROM writ_join_tokens WHERE hash = $1 RETURNING data", []byte(hash)).Scan(&data)
		if errors.Is(err, pgx.ErrNoRows) {
			return datastore.ErrNotFound
		}
		if err != nil {
			return err
		}
		if t, err = decodeJoinToken([]byte(hash), data); err != nil {
			return corrupt("join token", err)
		}
		w.changed = true
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("consume join token: %w", err)
	}
	// The removal is committed even when the token has expired.
	if !t.ExpiresAt.After(now) {
		return nil, fmt.Errorf("consume join token: %w", datastore.ErrExpired)
	}
	return t, nil
}

// PruneJoinTokens removes the tokens that have expired at now (ExpiresAt
// not after now) and returns how many.
func (s *Store) PruneJoinTokens(ctx context.Context, now time.Time) (int, error) {
	var n int
	err := s.write(ctx, func(w *writer) error {
		tag, err := w.tx.Exec(ctx, "DELETE FROM writ_join_tokens WHERE expires_at <= $1", unixNanos(now))
		if err != nil {
			return err
		}
		n = int(tag.RowsAffected())
		w.changed = n > 0
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("prune join tokens: %w", err)
	}
	return n, nil
}

// Bundles, keyed by trust domain name.

// FetchBundle returns the bundle of td.
func (s *Store) FetchBundle(ctx context.Context, td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	var data []byte
	err := s.call(ctx, func() error {
		if td.IsZero() {
			return datastore.ErrNotFound
		}
		return s.pool.QueryRow(ctx, "SELECT data FROM writ_bundles WHERE trust_domain = $1", []byte(td.Name())).Scan(&data)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		err = datastore.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("fetch bundle: %w", err)
	}
	b, err := decodeBundleRecord(td, data)
	if err != nil {
		return nil, fmt.Errorf("fetch bundle: %w", err)
	}
	return b, nil
}

func decodeBundleRecord(td spiffeid.TrustDomain, data []byte) (*spiffebundle.Bundle, error) {
	b, err := decodeBundle(td, data)
	if err != nil {
		return nil, corrupt(fmt.Sprintf("bundle %q", td.Name()), err)
	}
	return b, nil
}

// ListBundles returns every bundle, in trust domain order.
func (s *Store) ListBundles(ctx context.Context) ([]*spiffebundle.Bundle, error) {
	var out []*spiffebundle.Bundle
	err := s.listRows(ctx, "SELECT trust_domain, data FROM writ_bundles ORDER BY trust_domain", func(name, data []byte) error {
		td, err := spiffeid.TrustDomainFromString(string(name))
		if err != nil {
			return corrupt(fmt.Sprintf("bundle %q", entry.Printable(string(name))), err)
		}
		b, err := decodeBundleRecord(td, data)
		if err != nil {
			return err
		}
		out = append(out, b)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list bundles: %w", err)
	}
	return out, nil
}

// errBundleChanged means the bundle changed between reading it and
// writing fn's result.
var errBundleChanged = errors.New("bundle changed")

// UpdateBundle reads the bundle of td (nil if none), passes a copy to fn
// and stores what fn returns, unless that is the bundle as it was. It
// runs fn outside any transaction and stores the result only if the
// bundle is still as fn saw it (checked with the row locked), calling fn
// again otherwise; so fn may run more than once, and may itself read the
// store. If fn fails nothing is written and fn's error is returned as is.
// fn must return a bundle of td.
func (s *Store) UpdateBundle(ctx context.Context, td spiffeid.TrustDomain, fn func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error)) (*spiffebundle.Bundle, error) {
	if td.IsZero() {
		return nil, fmt.Errorf("update bundle: %w", invalid("trust domain is empty"))
	}
	key := []byte(td.Name())
	for {
		var old []byte
		err := s.call(ctx, func() error {
			err := s.pool.QueryRow(ctx, "SELECT data FROM writ_bundles WHERE trust_domain = $1", key).Scan(&old)
			if errors.Is(err, pgx.ErrNoRows) {
				old, err = nil, nil
			}
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("update bundle: %w", err)
		}
		var cur *spiffebundle.Bundle
		if old != nil {
			if cur, err = decodeBundleRecord(td, old); err != nil {
				return nil, fmt.Errorf("update bundle: %w", err)
			}
		}
		next, err := fn(cur)
		if err != nil {
			return nil, err
		}
		if next == nil {
			return nil, fmt.Errorf("update bundle %s: fn returned no bundle", td.Name())
		}
		if next.TrustDomain() != td {
			return nil, fmt.Errorf("update bundle %s: fn returned a bundle of %s", td.Name(), next.TrustDomain().Name())
		}
		enc, err := encodeBundle(next)
		if err != nil {
			return nil, fmt.Errorf("update bundle: %w", err)
		}
		if !bytes.Equal(enc, old) {
			err = s.write(ctx, func(w *writer) error {
				if err := w.lock(); err != nil {
					return err
				}
				var now []byte
				err := w.tx.QueryRow(ctx, "SELECT data FROM writ_bundles WHERE trust_domain = $1 FOR UPDATE", key).Scan(&now)
				if err != nil && !errors.Is(err, pgx.ErrNoRows) {
					return err
				}
				if !bytes.Equal(now, old) || (now == nil) != (old == nil) {
					return errBundleChanged
				}
				_, err = w.tx.Exec(ctx, `INSERT INTO writ_bundles (trust_domain, data) VALUES ($1, $2)
					ON CONFLICT (trust_domain) DO UPDATE SET data = EXCLUDED.data`, key, enc)
				if err != nil {
					return err
				}
				w.logEvent(datastore.EventBundle, key, nil)
				return nil
			})
			if errors.Is(err, errBundleChanged) {
				s.log.Debug("bundle changed during update; calling fn again", logkey.TrustDomain, td.Name())
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("update bundle: %w", err)
			}
		}
		return decodeBundleRecord(td, enc)
	}
}

// DeleteBundle removes the bundle of td (datastore.ErrNotFound if none).
func (s *Store) DeleteBundle(ctx context.Context, td spiffeid.TrustDomain) error {
	key := []byte(td.Name())
	err := s.write(ctx, func(w *writer) error {
		if td.IsZero() {
			return datastore.ErrNotFound
		}
		if err := w.lock(); err != nil {
			return err
		}
		tag, err := w.tx.Exec(ctx, "DELETE FROM writ_bundles WHERE trust_domain = $1", key)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return datastore.ErrNotFound
		}
		w.logEvent(datastore.EventBundle, key, nil)
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete bundle: %w", err)
	}
	return nil
}

// CA keys, keyed by ID.

// PutCAKey creates or replaces the metadata of one CA key.
func (s *Store) PutCAKey(ctx context.Context, k *datastore.CAKey) error {
	if k == nil || k.ID == "" || len(k.ID) > maxKeyLength {
		return fmt.Errorf("put CA key: %w", invalid("CA key ID is empty or longer than %d bytes", maxKeyLength))
	}
	if err := checkCAKeyStrings(k); err != nil {
		return fmt.Errorf("put CA key: %w", err)
	}
	err := s.write(ctx, func(w *writer) error {
		_, err := w.tx.Exec(ctx, `INSERT INTO writ_ca_keys (id, server_id, state, data) VALUES ($1, $2, $3, $4)
			ON CONFLICT (id) DO UPDATE SET server_id = EXCLUDED.server_id, state = EXCLUDED.state, data = EXCLUDED.data`,
			[]byte(k.ID), []byte(k.ServerID), string(k.State), encodeCAKey(k))
		w.changed = true
		return err
	})
	if err != nil {
		return fmt.Errorf("put CA key: %w", err)
	}
	return nil
}

// ListCAKeys returns every CA key, in ID order.
func (s *Store) ListCAKeys(ctx context.Context) ([]*datastore.CAKey, error) {
	var out []*datastore.CAKey
	err := s.listRows(ctx, "SELECT id, data FROM writ_ca_keys ORDER BY id", func(id, data []byte) error {
		k, err := decodeCAKey(data)
		if err == nil && k.ID != string(id) {
			err = fmt.Errorf("%w: stored under another ID", errDecode)
		}
		if err != nil {
			return corrupt(fmt.Sprintf("CA key %q", entry.Printable(string(id))), err)
		}
		out = append(out, k)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list CA keys: %w", err)
	}
	return out, nil
}

// DeleteCAKey removes a CA key (datastore.ErrNotFound if none).
func (s *Store) DeleteCAKey(ctx context.Context, id string) error {
	err := s.write(ctx, func(w *writer) error {
		tag, err := w.tx.Exec(ctx, "DELETE FROM writ_ca_keys WHERE id = $1", []byte(id))
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
		return fmt.Errorf("delete CA key: %w", err)
	}
	return nil
}

// Servers, keyed by ID.

// PutServer creates or replaces the record of one CA server. It logs no
// event and signals no watcher: servers write it as a heartbeat.
func (s *Store) PutServer(ctx context.Context, srv *datastore.Server) error {
	if srv == nil || srv.ID == "" || len(srv.ID) > maxKeyLength {
		return fmt.Errorf("put server: %w", invalid("server ID is empty or longer than %d bytes", maxKeyLength))
	}
	for _, str := range []string{srv.ID, srv.Address, srv.Version} {
		if !validString(str) {
			return fmt.Errorf("put server: %w", invalid("server record has a field that is not valid UTF-8"))
		}
	}
	err := s.call(ctx, func() error {
		_, err := s.pool.Exec(ctx, `INSERT INTO writ_servers (id, data) VALUES ($1, $2)
			ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data`, []byte(srv.ID), encodeServer(srv))
		return err
	})
	if err != nil {
		return fmt.Errorf("put server: %w", err)
	}
	return nil
}

// ListServers returns every server's record, in ID order.
func (s *Store) ListServers(ctx context.Context) ([]*datastore.Server, error) {
	var out []*datastore.Server
	err := s.listRows(ctx, "SELECT id, data FROM writ_servers ORDER BY id", func(id, data []byte) error {
		srv, err := decodeServer(data)
		if err == nil && srv.ID != string(id) {
			err = fmt.Errorf("%w: stored under another ID", errDecode)
		}
		if err != nil {
			return corrupt(fmt.Sprintf("server %q", entry.Printable(string(id))), err)
		}
		out = append(out, srv)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list servers: %w", err)
	}
	return out, nil
}
