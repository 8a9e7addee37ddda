package admin_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"writ.dev/writ/ca/admin"
	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"

	"writ.dev/writ/internal/logkey"
)

func TestServerID(t *testing.T) {
	if got := admin.ServerID(td).String(); got != "spiffe://example.org/writ/server" {
		t.Errorf("ServerID = %q", got)
	}
	if got := admin.ServerID(spiffeid.TrustDomain{}); !got.IsZero() {
		t.Errorf("ServerID of the zero trust domain = %q, want zero", got)
	}
}

func TestNewConfig(t *testing.T) {
	valid := func() admin.Config {
		return admin.Config{TrustDomain: td, Store: newStore(t), Logger: slog.New(slog.DiscardHandler)}
	}
	tests := []struct {
		name string
		edit func(*admin.Config)
		ok   bool
	}{
		{"minimal", func(*admin.Config) {}, true},
		{"allowed uids", func(c *admin.Config) { c.AllowedUIDs = []uint32{1000, 1001} }, true},
		{"token ttl", func(c *admin.Config) { c.DefaultJoinTokenTTL = time.Hour }, true},
		{"no trust domain", func(c *admin.Config) { c.TrustDomain = spiffeid.TrustDomain{} }, false},
		{"no store", func(c *admin.Config) { c.Store = nil }, false},
		{"no logger", func(c *admin.Config) { c.Logger = nil }, false},
		{"token ttl fraction", func(c *admin.Config) { c.DefaultJoinTokenTTL = 1500 * time.Millisecond }, false},
		{"token ttl negative", func(c *admin.Config) { c.DefaultJoinTokenTTL = -time.Minute }, false},
		{"token ttl too long", func(c *admin.Config) { c.DefaultJoinTokenTTL = entry.MaxTTL + time.Second }, false},
		{"allow overflow uid", func(c *admin.Config) { c.AllowedUIDs = []uint32{1000, 65534} }, false},
		{"allow uid -1", func(c *admin.Config) { c.AllowedUIDs = []uint32{1<<32 - 1} }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := valid()
			tt.edit(&cfg)
			_, err := admin.New(cfg)
			if (err == nil) != tt.ok {
				t.Errorf("New: %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// failingStore fails every call with err.
type failingStore struct {
	admin.Store
	err error
}

func (f failingStore) CreateEntries(context.Context, []*entry.Entry) ([]datastore.EntryResult, error) {
	return nil, f.err
}
func (f failingStore) FetchEntry(context.Context, string) (*entry.Entry, error) { return nil, f.err }
func (f failingStore) ListEntries(context.Context, datastore.EntryFilter) ([]*entry.Entry, error) {
	return nil, f.err
}
func (f failingStore) UpdateEntry(context.Context, string, func(*entry.Entry) error) (*entry.Entry, error) {
	return nil, f.err
}
func (f failingStore) DeleteEntry(context.Context, string) (*entry.Entry, error) { return nil, f.err }
func (f failingStore) FetchAgent(context.Context, spiffeid.ID) (*datastore.Agent, error) {
	return nil, f.err
}
func (f failingStore) ListAgents(context.Context) ([]*datastore.Agent, error) { return nil, f.err }
func (f failingStore) UpdateAgent(context.Context, spiffeid.ID, func(*datastore.Agent) error) (*datastore.Agent, error) {
	return nil, f.err
}
func (f failingStore) DeleteAgent(context.Context, spiffeid.ID) (*datastore.Agent, error) {
	return nil, f.err
}
func (f failingStore) CreateJoinToken(context.Context, *datastore.JoinToken) error { return f.err }
func (f failingStore) FetchBundle(context.Context, spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	return nil, f.err
}
func (f failingStore) ListServers(context.Context) ([]*datastore.Server, error) { return nil, f.err }

// TestStoreFailureIsInternal checks that a store failure reaches the
// caller as a bare Internal and its detail is logged once.
func TestStoreFailureIsInternal(t *testing.T) {
	const detail = "disk on fire at /var/lib/writ"
	for _, c := range adminCalls() {
		if strings.HasPrefix(c.method, "/writ.admin.v1.CAService/") {
			// Served by the key manager: see TestCAServiceStoreFailure.
			continue
		}
		t.Run(strings.TrimPrefix(c.method, "/writ.admin.v1."), func(t *testing.T) {
			e := newEnv(t, envOptions{wrap: func(s admin.Store) admin.Store {
				return failingStore{Store: s, err: errors.New(detail)}
			}})
			err := c.call(ctxT(t), e.conn)
			if status.Code(err) != codes.Internal || status.Convert(err).Message() != "internal error" {
				t.Fatalf("%v, want Internal \"internal error\"", err)
			}
			var n int
			for _, rec := range e.logs.all() {
				if strings.Contains(rec.text, detail) {
					n++
					if rec.level != slog.LevelError || rec.attrs[logkey.Method].String() != c.method {
						t.Errorf("detail logged as %s", rec.text)
					}
				}
			}
			if n != 1 {
				t.Errorf("detail logged %d times, want once", n)
			}
		})
	}
}

// TestStoreUnavailableIsUnavailable checks that a datastore that cannot
// be reached for now reaches the caller as Unavailable, so that clients
// retry.
func TestStoreUnavailableIsUnavailable(t *testing.T) {
	for _, c := range adminCalls() {
		t.Run(strings.TrimPrefix(c.method, "/writ.admin.v1."), func(t *testing.T) {
			e := newEnv(t, envOptions{wrap: func(s admin.Store) admin.Store {
				return failingStore{Store: s, err: fmt.Errorf("connect: %w", datastore.ErrUnavailable)}
			}})
			err := c.call(ctxT(t), e.conn)
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("%v, want Unavailable", err)
			}
		})
	}
}

// brokenBatchStore breaks the CreateEntries contract in the given way.
type brokenBatchStore struct {
	admin.Store
	results func(n int) []datastore.EntryResult
}

func (b brokenBatchStore) CreateEntries(_ context.Context, es []*entry.Entry) ([]datastore.EntryResult, error) {
	return b.results(len(es)), nil
}

func TestBatchCreateEntryStoreItemFailures(t *testing.T) {
	tests := []struct {
		name    string
		results func(n int) []datastore.EntryResult
		rpc     codes.Code // of the call
		item    codes.Code // of the item, if the call succeeds
	}{
		{"too few results", func(n int) []datastore.EntryResult {
			return make([]datastore.EntryResult, n)[:0:0]
		}, codes.Internal, 0},
		{"unexpected item error", func(n int) []datastore.EntryResult {
			r := make([]datastore.EntryResult, n)
			for i := range r {
				r[i].Err = errors.New("torn write")
			}
			return r
		}, codes.OK, codes.Internal},
		{"neither entry nor error", func(n int) []datastore.EntryResult {
			return make([]datastore.EntryResult, n)
		}, codes.OK, codes.Internal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, envOptions{wrap: func(s admin.Store) admin.Store {
				return brokenBatchStore{Store: s, results: tt.results}
			}})
			resp, err := e.entries.BatchCreateEntry(ctxT(t), &adminv1.BatchCreateEntryRequest{Entries: []*adminv1.Entry{validEntry(0)}})
			if status.Code(err) != tt.rpc {
				t.Fatalf("BatchCreateEntry: %v, want %v", err, tt.rpc)
			}
			if err != nil {
				return
			}
			st := resp.GetResults()[0].GetStatus()
			if codes.Code(st.GetCode()) != tt.item || st.GetMessage() != "internal error" {
				t.Errorf("item status %v, want %v \"internal error\"", st, tt.item)
			}
		})
	}
}
