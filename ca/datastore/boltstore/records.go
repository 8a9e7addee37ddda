package boltstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"

	"writ.dev/writ/internal/logkey"
)

// maxKeyLength bounds the caller-chosen keys of join tokens and CA keys,
// well below bbolt's limit.
const maxKeyLength = 1024

// Agents, keyed by SPIFFE ID.

func agentKey(a *datastore.Agent) ([]byte, error) {
	if a == nil || a.SPIFFEID.IsZero() {
		return nil, invalid("agent has no SPIFFE ID")
	}
	if s := a.SPIFFEID.String(); len(s) <= entry.MaxIDLength {
		return []byte(s), nil
	}
	return nil, invalid("agent SPIFFE ID is longer than %d bytes", entry.MaxIDLength)
}

// CreateAgent stores a new agent (datastore.ErrAlreadyExists if one with
// its SPIFFE ID exists).
func (s *Store) CreateAgent(ctx context.Context, a *datastore.Agent) error {
	return s.putAgent(ctx, "create agent", a, false)
}

// UpdateAgent atomically reads the agent, lets fn change it and stores
// the result (datastore.ErrNotFound if there is no such agent). fn runs
// inside the write transaction: it must be quick and must not call the
// store.
func (s *Store) UpdateAgent(ctx context.Context, id spiffeid.ID, fn func(*datastore.Agent) error) (*datastore.Agent, error) {
	key := []byte(id.String())
	var out *datastore.Agent
	err := s.update(ctx, func(w *writer) error {
		v := w.agents.Get(key)
		if id.IsZero() || v == nil {
			return datastore.ErrNotFound
		}
		a, err := decodeAgentRecord(key, v)
		if err != nil {
			return err
		}
		if err := fn(a); err != nil {
			return err
		}
		if a.SPIFFEID != id {
			return invalid("an update may not change the agent's SPIFFE ID")
		}
		if _, err := agentKey(a); err != nil {
			return err
		}
		if err := w.agents.Put(key, encodeAgent(a)); err != nil {
			return err
		}
		out = a
		return w.logEvent(datastore.EventAgent, string(key), nil)
	})
	if err != nil {
		return nil, fmt.Errorf("update agent: %w", err)
	}
	return cloneAgent(out), nil
}

func cloneAgent(a *datastore.Agent) *datastore.Agent {
	c := *a
	return &c
}

func (s *Store) putAgent(ctx context.Context, op string, a *datastore.Agent, replace bool) error {
	key, err := agentKey(a)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	err = s.update(ctx, func(w *writer) error {
		exists := w.agents.Get(key) != nil
		switch {
		case exists && !replace:
			return datastore.ErrAlreadyExists
		case !exists && replace:
			return datastore.ErrNotFound
		}
		if err := w.agents.Put(key, encodeAgent(a)); err != nil {
			return err
		}
		return w.logEvent(datastore.EventAgent, string(key), nil)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

// FetchAgent returns the agent with this SPIFFE ID.
func (s *Store) FetchAgent(ctx context.Context, id spiffeid.ID) (*datastore.Agent, error) {
	var a *datastore.Agent
	err := s.view(ctx, func(r *reader) error {
		v := r.agents.Get([]byte(id.String()))
		if v == nil || id.IsZero() {
			return datastore.ErrNotFound
		}
		var err error
		a, err = decodeAgentRecord([]byte(id.String()), v)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("fetch agent: %w", err)
	}
	return a, nil
}

func decodeAgentRecord(k, v []byte) (*datastore.Agent, error) {
	a, err := decodeAgent(v)
	if err == nil && a.SPIFFEID.String() != string(k) {
		err = fmt.Errorf("%w: stored under another SPIFFE ID", errDecode)
	}
	if err != nil {
		return nil, corrupt(fmt.Sprintf("agent %q", k), err)
	}
	return a, nil
}

// ListAgents returns every agent, in SPIFFE ID order.
func (s *Store) ListAgents(ctx context.Context) ([]*datastore.Agent, error) {
	var out []*datastore.Agent
	err := s.view(ctx, func(r *reader) error {
		return r.agents.ForEach(func(k, v []byte) error {
			a, err := decodeAgentRecord(k, v)
			if err != nil {
				return err
			}
			out = append(out, a)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	return out, nil
}

// DeleteAgent removes the agent (datastore.ErrNotFound if none) and
// returns it as it was.
func (s *Store) DeleteAgent(ctx context.Context, id spiffeid.ID) (*datastore.Agent, error) {
	key := []byte(id.String())
	var old *datastore.Agent
	err := s.update(ctx, func(w *writer) error {
		v := w.agents.Get(key)
		if id.IsZero() || v == nil {
			return datastore.ErrNotFound
		}
		var err error
		if old, err = decodeAgentRecord(key, v); err != nil {
			return err
		}
		if err := w.agents.Delete(key); err != nil {
			return err
		}
		return w.logEvent(datastore.EventAgent, string(key), nil)
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
	key := []byte(t.Hash)
	err := s.update(ctx, func(w *writer) error {
		if w.tokens.Get(key) != nil {
			return datastore.ErrAlreadyExists
		}
		w.changed = true
		return w.tokens.Put(key, encodeJoinToken(t))
	})
	if err != nil {
		return fmt.Errorf("create join token: %w", err)
	}
	return nil
}

// ConsumeJoinToken removes the token with this hash and returns it. Of
// concurrent callers, exactly one gets it: bbolt runs one write
// transaction at a time, and the token is read and deleted in one. A token
// whose ExpiresAt is not after now is removed and datastore.ErrExpired
// returned.
func (s *Store) ConsumeJoinToken(ctx context.Context, hash string, now time.Time) (*datastore.JoinToken, error) {
	var t *datastore.JoinToken
	var expired bool
	err := s.update(ctx, func(w *writer) error {
		key := []byte(hash)
		v := w.tokens.Get(key)
		if v == nil || hash == "" {
			return datastore.ErrNotFound
		}
		var err error
		if t, err = decodeJoinToken(v); err != nil {
			return corrupt("join token", err)
		}
		if err := w.tokens.Delete(key); err != nil {
			return err
		}
		w.changed = true
		// Commit the removal even when the token has expired.
		expired = !t.ExpiresAt.After(now)
		return nil
	})
	if err == nil && expired {
		err = datastore.ErrExpired
	}
	if err != nil {
		return nil, fmt.Errorf("consume join token: %w", err)
	}
	return t, nil
}

// PruneJoinTokens removes the tokens that have expired at now (ExpiresAt
// not after now, as for ConsumeJoinToken) and returns how many.
func (s *Store) PruneJoinTokens(ctx context.Context, now time.Time) (int, error) {
	var n int
	err := s.update(ctx, func(w *writer) error {
		var expired [][]byte
		err := w.tokens.ForEach(func(k, v []byte) error {
			t, err := decodeJoinToken(v)
			if err != nil {
				return corrupt("join token", err)
			}
			if !t.ExpiresAt.After(now) {
				expired = append(expired, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range expired {
			if err := w.tokens.Delete(k); err != nil {
				return err
			}
		}
		n = len(expired)
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
	var b *spiffebundle.Bundle
	err := s.view(ctx, func(r *reader) error {
		v := r.bundles.Get([]byte(td.Name()))
		if v == nil || td.IsZero() {
			return datastore.ErrNotFound
		}
		var err error
		b, err = decodeBundleRecord(td, v)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("fetch bundle: %w", err)
	}
	return b, nil
}

func decodeBundleRecord(td spiffeid.TrustDomain, v []byte) (*spiffebundle.Bundle, error) {
	b, err := decodeBundle(td, v)
	if err != nil {
		return nil, corrupt(fmt.Sprintf("bundle %q", td.Name()), err)
	}
	return b, nil
}

// ListBundles returns every bundle, in trust domain order.
func (s *Store) ListBundles(ctx context.Context) ([]*spiffebundle.Bundle, error) {
	var out []*spiffebundle.Bundle
	err := s.view(ctx, func(r *reader) error {
		return r.bundles.ForEach(func(k, v []byte) error {
			td, err := spiffeid.TrustDomainFromString(string(k))
			if err != nil {
				return corrupt(fmt.Sprintf("bundle %q", k), err)
			}
			b, err := decodeBundleRecord(td, v)
			if err != nil {
				return err
			}
			out = append(out, b)
			return nil
		})
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
// runs fn outside the write transaction and stores the result only if the
// bundle is still as fn saw it, calling fn again otherwise; so fn may run
// more than once, and may itself read the store. If fn fails nothing is
// written and fn's error is returned as is. fn must return a bundle of
// td: bundles are never moved between trust domains.
func (s *Store) UpdateBundle(ctx context.Context, td spiffeid.TrustDomain, fn func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error)) (*spiffebundle.Bundle, error) {
	if td.IsZero() {
		return nil, fmt.Errorf("update bundle: %w", invalid("trust domain is empty"))
	}
	key := []byte(td.Name())
	for {
		var old []byte
		err := s.view(ctx, func(r *reader) error {
			old = bytes.Clone(r.bundles.Get(key))
			return nil
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
			err = s.update(ctx, func(w *writer) error {
				if !bytes.Equal(w.bundles.Get(key), old) {
					return errBundleChanged
				}
				if err := w.bundles.Put(key, enc); err != nil {
					return err
				}
				return w.logEvent(datastore.EventBundle, td.Name(), nil)
			})
			if errors.Is(err, errBundleChanged) {
				s.log.Debug("bundle changed during update; calling fn again", logkey.TrustDomain, td.Name())
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("update bundle: %w", err)
			}
		}
		// Return a copy that shares nothing with fn's result.
		return decodeBundleRecord(td, enc)
	}
}

// DeleteBundle removes the bundle of td (datastore.ErrNotFound if none).
func (s *Store) DeleteBundle(ctx context.Context, td spiffeid.TrustDomain) error {
	key := []byte(td.Name())
	err := s.update(ctx, func(w *writer) error {
		if td.IsZero() || w.bundles.Get(key) == nil {
			return datastore.ErrNotFound
		}
		if err := w.bundles.Delete(key); err != nil {
			return err
		}
		return w.logEvent(datastore.EventBundle, td.Name(), nil)
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
	err := s.update(ctx, func(w *writer) error {
		w.changed = true
		return w.caKeys.Put([]byte(k.ID), encodeCAKey(k))
	})
	if err != nil {
		return fmt.Errorf("put CA key: %w", err)
	}
	return nil
}

// ListCAKeys returns every CA key, in ID order.
func (s *Store) ListCAKeys(ctx context.Context) ([]*datastore.CAKey, error) {
	var out []*datastore.CAKey
	err := s.view(ctx, func(r *reader) error {
		return r.caKeys.ForEach(func(k, v []byte) error {
			key, err := decodeCAKey(v)
			if err == nil && key.ID != string(k) {
				err = fmt.Errorf("%w: stored under another ID", errDecode)
			}
			if err != nil {
				return corrupt(fmt.Sprintf("CA key %q", k), err)
			}
			out = append(out, key)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list CA keys: %w", err)
	}
	return out, nil
}

// DeleteCAKey removes a CA key (datastore.ErrNotFound if none).
func (s *Store) DeleteCAKey(ctx context.Context, id string) error {
	err := s.update(ctx, func(w *writer) error {
		key := []byte(id)
		if id == "" || w.caKeys.Get(key) == nil {
			return datastore.ErrNotFound
		}
		w.changed = true
		return w.caKeys.Delete(key)
	})
	if err != nil {
		return fmt.Errorf("delete CA key: %w", err)
	}
	return nil
}

// Servers, keyed by server ID.

// errNoServersBucket is returned if the servers bucket is missing from
// an open store; Open creates it, so only damage removes it.
var errNoServersBucket = fmt.Errorf("%w: bucket %q is missing", datastore.ErrCorrupt, bucketServers)

// PutServer creates or replaces the record of the server with srv.ID. It
// logs no event and wakes no watcher.
func (s *Store) PutServer(ctx context.Context, srv *datastore.Server) error {
	if srv == nil || srv.ID == "" || len(srv.ID) > maxKeyLength {
		return fmt.Errorf("put server: %w", invalid("server ID is empty or longer than %d bytes", maxKeyLength))
	}
	err := s.update(ctx, func(w *writer) error {
		if w.servers == nil {
			return errNoServersBucket
		}
		return w.servers.Put([]byte(srv.ID), encodeServer(srv))
	})
	if err != nil {
		return fmt.Errorf("put server: %w", err)
	}
	return nil
}

// ListServers returns every server record, in ID order.
func (s *Store) ListServers(ctx context.Context) ([]*datastore.Server, error) {
	var out []*datastore.Server
	err := s.view(ctx, func(r *reader) error {
		if r.servers == nil {
			return errNoServersBucket
		}
		return r.servers.ForEach(func(k, v []byte) error {
			srv, err := decodeServer(v)
			if err == nil && srv.ID != string(k) {
				err = fmt.Errorf("%w: stored under another ID", errDecode)
			}
			if err != nil {
				return corrupt(fmt.Sprintf("server %q", k), err)
			}
			out = append(out, srv)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list servers: %w", err)
	}
	return out, nil
}
