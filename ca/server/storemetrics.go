package server

import (
	"context"
	"errors"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/internal/metrics"
)

// measuredStore is a datastore.Store that records the latency and the
// failures of each operation of the store it wraps, whatever the backend.
// Answers that are part of an operation's contract (not found, already
// exists, expired, events pruned), errors of the caller's update function
// and cancelled contexts are not failures.
type measuredStore struct {
	datastore.Store
	m   *metrics.Server
	clk clock.Clock
}

var _ datastore.Store = (*measuredStore)(nil)

// measureStore wraps s, or returns it as it is when m is nil.
func measureStore(s datastore.Store, m *metrics.Server, clk clock.Clock) datastore.Store {
	if m == nil {
		return s
	}
	return &measuredStore{Store: s, m: m, clk: clk}
}

func (s *measuredStore) done(op string, began time.Time, err, fnErr error) {
	failed := err != nil &&
		!errors.Is(err, datastore.ErrNotFound) &&
		!errors.Is(err, datastore.ErrAlreadyExists) &&
		!errors.Is(err, datastore.ErrExpired) &&
		!errors.Is(err, datastore.ErrEventsPruned) &&
		!errors.Is(err, context.Canceled) &&
		(fnErr == nil || !errors.Is(err, fnErr))
	s.m.DatastoreOp(op, s.clk.Now().Sub(began), failed)
}

// catch wraps an update function so that its own error can be told from
// the store's.
func catch[T any](fn func(T) error, fnErr *error) func(T) error {
	return func(v T) error {
		err := fn(v)
		*fnErr = err
		return err
	}
}

func (s *measuredStore) CreateEntries(ctx context.Context, entries []*entry.Entry) ([]datastore.EntryResult, error) {
	t := s.clk.Now()
	r, err := s.Store.CreateEntries(ctx, entries)
	s.done("CreateEntries", t, err, nil)
	return r, err
}

func (s *measuredStore) FetchEntry(ctx context.Context, id string) (*entry.Entry, error) {
	t := s.clk.Now()
	r, err := s.Store.FetchEntry(ctx, id)
	s.done("FetchEntry", t, err, nil)
	return r, err
}

func (s *measuredStore) ListEntries(ctx context.Context, f datastore.EntryFilter) ([]*entry.Entry, error) {
	t := s.clk.Now()
	r, err := s.Store.ListEntries(ctx, f)
	s.done("ListEntries", t, err, nil)
	return r, err
}

func (s *measuredStore) UpdateEntry(ctx context.Context, id string, fn func(*entry.Entry) error) (*entry.Entry, error) {
	t := s.clk.Now()
	var fnErr error
	r, err := s.Store.UpdateEntry(ctx, id, catch(fn, &fnErr))
	s.done("UpdateEntry", t, err, fnErr)
	return r, err
}

func (s *measuredStore) DeleteEntry(ctx context.Context, id string) (*entry.Entry, error) {
	t := s.clk.Now()
	r, err := s.Store.DeleteEntry(ctx, id)
	s.done("DeleteEntry", t, err, nil)
	return r, err
}

func (s *measuredStore) CreateAgent(ctx context.Context, a *datastore.Agent) error {
	t := s.clk.Now()
	err := s.Store.CreateAgent(ctx, a)
	s.done("CreateAgent", t, err, nil)
	return err
}

func (s *measuredStore) FetchAgent(ctx context.Context, id spiffeid.ID) (*datastore.Agent, error) {
	t := s.clk.Now()
	r, err := s.Store.FetchAgent(ctx, id)
	s.done("FetchAgent", t, err, nil)
	return r, err
}

func (s *measuredStore) ListAgents(ctx context.Context) ([]*datastore.Agent, error) {
	t := s.clk.Now()
	r, err := s.Store.ListAgents(ctx)
	s.done("ListAgents", t, err, nil)
	return r, err
}

func (s *measuredStore) UpdateAgent(ctx context.Context, id spiffeid.ID, fn func(*datastore.Agent) error) (*datastore.Agent, error) {
	t := s.clk.Now()
	var fnErr error
	r, err := s.Store.UpdateAgent(ctx, id, catch(fn, &fnErr))
	s.done("UpdateAgent", t, err, fnErr)
	return r, err
}

func (s *measuredStore) DeleteAgent(ctx context.Context, id spiffeid.ID) (*datastore.Agent, error) {
	t := s.clk.Now()
	r, err := s.Store.DeleteAgent(ctx, id)
	s.done("DeleteAgent", t, err, nil)
	return r, err
}

func (s *measuredStore) CreateJoinToken(ctx context.Context, jt *datastore.JoinToken) error {
	t := s.clk.Now()
	err := s.Store.CreateJoinToken(ctx, jt)
	s.done("CreateJoinToken", t, err, nil)
	return err
}

func (s *measuredStore) ConsumeJoinToken(ctx context.Context, hash string, now time.Time) (*datastore.JoinToken, error) {
	t := s.clk.Now()
	r, err := s.Store.ConsumeJoinToken(ctx, hash, now)
	s.done("ConsumeJoinToken", t, err, nil)
	return r, err
}

func (s *measuredStore) PruneJoinTokens(ctx context.Context, now time.Time) (int, error) {
	t := s.clk.Now()
	r, err := s.Store.PruneJoinTokens(ctx, now)
	s.done("PruneJoinTokens", t, err, nil)
	return r, err
}

func (s *measuredStore) FetchBundle(ctx context.Context, td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	t := s.clk.Now()
	r, err := s.Store.FetchBundle(ctx, td)
	s.done("FetchBundle", t, err, nil)
	return r, err
}

func (s *measuredStore) ListBundles(ctx context.Context) ([]*spiffebundle.Bundle, error) {
	t := s.clk.Now()
	r, err := s.Store.ListBundles(ctx)
	s.done("ListBundles", t, err, nil)
	return r, err
}

func (s *measuredStore) UpdateBundle(ctx context.Context, td spiffeid.TrustDomain, fn func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error)) (*spiffebundle.Bundle, error) {
	t := s.clk.Now()
	var fnErr error
	r, err := s.Store.UpdateBundle(ctx, td, func(b *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
		nb, err := fn(b)
		fnErr = err
		return nb, err
	})
	s.done("UpdateBundle", t, err, fnErr)
	return r, err
}

func (s *measuredStore) DeleteBundle(ctx context.Context, td spiffeid.TrustDomain) error {
	t := s.clk.Now()
	err := s.Store.DeleteBundle(ctx, td)
	s.done("DeleteBundle", t, err, nil)
	return err
}

func (s *measuredStore) PutCAKey(ctx context.Context, k *datastore.CAKey) error {
	t := s.clk.Now()
	err := s.Store.PutCAKey(ctx, k)
	s.done("PutCAKey", t, err, nil)
	return err
}

func (s *measuredStore) ListCAKeys(ctx context.Context) ([]*datastore.CAKey, error) {
	t := s.clk.Now()
	r, err := s.Store.ListCAKeys(ctx)
	s.done("ListCAKeys", t, err, nil)
	return r, err
}

func (s *measuredStore) DeleteCAKey(ctx context.Context, id string) error {
	t := s.clk.Now()
	err := s.Store.DeleteCAKey(ctx, id)
	s.done("DeleteCAKey", t, err, nil)
	return err
}

func (s *measuredStore) PutServer(ctx context.Context, srv *datastore.Server) error {
	t := s.clk.Now()
	err := s.Store.PutServer(ctx, srv)
	s.done("PutServer", t, err, nil)
	return err
}

func (s *measuredStore) ListServers(ctx context.Context) ([]*datastore.Server, error) {
	t := s.clk.Now()
	r, err := s.Store.ListServers(ctx)
	s.done("ListServers", t, err, nil)
	return r, err
}

func (s *measuredStore) Events(ctx context.Context, after uint64, limit int) ([]datastore.Event, error) {
	t := s.clk.Now()
	r, err := s.Store.Events(ctx, after, limit)
	s.done("Events", t, err, nil)
	return r, err
}

func (s *measuredStore) Snapshot(ctx context.Context) (*datastore.Snapshot, error) {
	t := s.clk.Now()
	r, err := s.Store.Snapshot(ctx)
	s.done("Snapshot", t, err, nil)
	return r, err
}

func (s *measuredStore) PutOAuthClient(ctx context.Context, c *datastore.OAuthClient) error {
	t := s.clk.Now()
	err := s.Store.PutOAuthClient(ctx, c)
	s.done("PutOAuthClient", t, err, nil)
	return err
}

func (s *measuredStore) FetchOAuthClient(ctx context.Context, id spiffeid.ID) (*datastore.OAuthClient, error) {
	t := s.clk.Now()
	r, err := s.Store.FetchOAuthClient(ctx, id)
	s.done("FetchOAuthClient", t, err, nil)
	return r, err
}

func (s *measuredStore) ListOAuthClients(ctx context.Context) ([]*datastore.OAuthClient, error) {
	t := s.clk.Now()
	r, err := s.Store.ListOAuthClients(ctx)
	s.done("ListOAuthClients", t, err, nil)
	return r, err
}

func (s *measuredStore) DeleteOAuthClient(ctx context.Context, id spiffeid.ID) error {
	t := s.clk.Now()
	err := s.Store.DeleteOAuthClient(ctx, id)
	s.done("DeleteOAuthClient", t, err, nil)
	return err
}

func (s *measuredStore) UseClientAssertion(ctx context.Context, hash string, expiresAt time.Time) error {
	t := s.clk.Now()
	err := s.Store.UseClientAssertion(ctx, hash, expiresAt)
	s.done("UseClientAssertion", t, err, nil)
	return err
}

func (s *measuredStore) PruneClientAssertions(ctx context.Context, now time.Time) (int, error) {
	t := s.clk.Now()
	r, err := s.Store.PruneClientAssertions(ctx, now)
	s.done("PruneClientAssertions", t, err, nil)
	return r, err
}

func (s *measuredStore) PutRevocation(ctx context.Context, r *datastore.Revocation) error {
	t := s.clk.Now()
	err := s.Store.PutRevocation(ctx, r)
	s.done("PutRevocation", t, err, nil)
	return err
}

func (s *measuredStore) ListRevocations(ctx context.Context, now time.Time) ([]*datastore.Revocation, error) {
	t := s.clk.Now()
	r, err := s.Store.ListRevocations(ctx, now)
	s.done("ListRevocations", t, err, nil)
	return r, err
}

func (s *measuredStore) PruneRevocations(ctx context.Context, now time.Time) (int, error) {
	t := s.clk.Now()
	r, err := s.Store.PruneRevocations(ctx, now)
	s.done("PruneRevocations", t, err, nil)
	return r, err
}
