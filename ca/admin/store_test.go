package admin_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/admin"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/datastore/boltstore"
)

// testStore is admin.Store plus the methods tests use to seed and
// inspect state.
type testStore interface {
	admin.Store
	CreateAgent(ctx context.Context, a *datastore.Agent) error
	ConsumeJoinToken(ctx context.Context, hash string, now time.Time) (*datastore.JoinToken, error)
	UpdateBundle(ctx context.Context, td spiffeid.TrustDomain, fn func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error)) (*spiffebundle.Bundle, error)
	PutServer(ctx context.Context, s *datastore.Server) error
}

// newStore opens a boltstore in t's temporary directory. At cleanup it
// checks that the admin API stored only valid entries, none with the
// server's ID and no duplicates, then closes it.
func newStore(t testing.TB) testStore {
	t.Helper()
	s, err := boltstore.Open(filepath.Join(t.TempDir(), "db"), boltstore.Options{})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() {
		defer func() {
			if err := s.Close(); err != nil {
				t.Errorf("close store: %v", err)
			}
		}()
		entries, err := s.ListEntries(context.Background(), datastore.EntryFilter{})
		if err != nil {
			t.Errorf("list entries at cleanup: %v", err)
			return
		}
		keys := make(map[[32]byte]string)
		for _, e := range entries {
			if err := e.Validate(td); err != nil {
				t.Errorf("stored entry %s is invalid: %v", e.ID, err)
			}
			if e.SPIFFEID == admin.ServerID(td) {
				t.Errorf("stored entry %s has the server's ID", e.ID)
			}
			if other, dup := keys[e.UniqueKey()]; dup {
				t.Errorf("stored entries %s and %s are duplicates", e.ID, other)
			}
			keys[e.UniqueKey()] = e.ID
		}
	})
	return s
}
