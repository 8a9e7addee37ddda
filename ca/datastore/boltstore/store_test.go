package boltstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/datastore/boltstore"
	"writ.dev/writ/ca/datastore/datastoretest"
	"writ.dev/writ/ca/entry"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// openStore opens a new store in a temporary directory. At cleanup it
// closes the store and opens it again, which verifies every invariant of
// the file (see Open).
func openStore(t testing.TB, opts boltstore.Options) (*boltstore.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "writ.db")
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	s, err := boltstore.Open(path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		s, err := boltstore.Open(path, opts)
		if err != nil {
			t.Errorf("reopening the store to check its invariants: %v", err)
			return
		}
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s, path
}

func TestConformance(t *testing.T) {
	datastoretest.Run(t, func(t *testing.T) datastore.Store {
		s, _ := openStore(t, boltstore.Options{})
		return s
	})
}

func newEntry(i int) *entry.Entry {
	return &entry.Entry{
		SPIFFEID: spiffeid.RequireFromPathf(td, "/ns/%d/sa/%d", i%100, i),
		ParentID: spiffeid.RequireFromPathf(td, "/agent/%d", i%100),
		Selectors: []entry.Selector{
			{Type: "k8s", Value: fmt.Sprintf("ns:%d", i%100)},
			{Type: "k8s", Value: fmt.Sprintf("sa:%d", i)},
			{Type: "unix", Value: fmt.Sprintf("uid:%d", 1000+i%7)},
		},
		X509SVIDTTL: time.Hour,
		CreatedAt:   time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC),
	}
}

func createN(t testing.TB, s *boltstore.Store, from, n int) []*entry.Entry {
	t.Helper()
	batch := make([]*entry.Entry, n)
	for i := range batch {
		batch[i] = newEntry(from + i)
	}
	res, err := s.CreateEntries(t.Context(), batch)
	if err != nil {
		t.Fatalf("CreateEntries: %v", err)
	}
	out := make([]*entry.Entry, n)
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("CreateEntries: entry %d: %v", i, r.Err)
		}
		out[i] = r.Entry
	}
	return out
}

// TestReopen checks that everything written is there after a restart,
// and that revisions go on from where they were.
func TestReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "writ.db")
	ctx := t.Context()
	s, err := boltstore.Open(path, boltstore.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	entries := createN(t, s, 0, 10)
	agent := &datastore.Agent{SPIFFEID: spiffeid.RequireFromPath(td, "/agent/1"), AttestationType: "join_token", SerialNumber: "1"}
	if err := s.CreateAgent(ctx, agent); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateJoinToken(ctx, &datastore.JoinToken{Hash: "h", SPIFFEID: agent.SPIFFEID, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateBundle(ctx, td, func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
		b := spiffebundle.New(td)
		b.SetSequenceNumber(3)
		return b, nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutCAKey(ctx, &datastore.CAKey{ID: "k", Kind: datastore.CAKeyJWT, State: datastore.CAKeyActive}); err != nil {
		t.Fatal(err)
	}
	before, err := s.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = boltstore.Open(path, boltstore.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	after, err := s.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.Revision != before.Revision || len(after.Entries) != len(entries) {
		t.Fatalf("after reopen: revision %d with %d entries, want %d with %d", after.Revision, len(after.Entries), before.Revision, len(entries))
	}
	for i := range entries {
		if !entryEqual(before.Entries[i], after.Entries[i]) {
			t.Errorf("entry %d: got %+v, want %+v", i, after.Entries[i], before.Entries[i])
		}
	}
	if _, err := s.FetchAgent(ctx, agent.SPIFFEID); err != nil {
		t.Errorf("FetchAgent: %v", err)
	}
	if _, err := s.ConsumeJoinToken(ctx, "h", time.Now()); err != nil {
		t.Errorf("ConsumeJoinToken: %v", err)
	}
	b, err := s.FetchBundle(ctx, td)
	if err != nil {
		t.Errorf("FetchBundle: %v", err)
	} else if seq, _ := b.SequenceNumber(); seq != 3 {
		t.Errorf("bundle sequence number %d, want 3", seq)
	}
	if keys, err := s.ListCAKeys(ctx); err != nil || len(keys) != 1 {
		t.Errorf("ListCAKeys: %v, %v", keys, err)
	}
	evs, err := s.Events(ctx, 0, 0)
	if err != nil || len(evs) != 12 {
		t.Errorf("Events: %d events, %v; want 12", len(evs), err)
	}
	next := createN(t, s, 100, 1)[0]
	if next.Revision != before.Revision+1 {
		t.Errorf("revision after reopen: %d, want %d", next.Revision, before.Revision+1)
	}
}

func entryEqual(a, b *entry.Entry) bool { return reflect.DeepEqual(a, b) }

// TestMaxEvents checks that writes keep the event log at MaxEvents,
// within one transaction of the write, including a batch larger than the
// log.
func TestMaxEvents(t *testing.T) {
	s, _ := openStore(t, boltstore.Options{MaxEvents: 10})
	ctx := t.Context()
	createN(t, s, 0, 4)
	evs, err := s.Events(ctx, 0, 0)
	if err != nil || len(evs) != 4 {
		t.Fatalf("Events: %d, %v; want 4 events", len(evs), err)
	}
	createN(t, s, 4, 25)
	rev := uint64(29)
	if _, err := s.Events(ctx, 0, 0); !errors.Is(err, datastore.ErrEventsPruned) {
		t.Fatalf("Events(0) after pruning: %v, want ErrEventsPruned", err)
	}
	if _, err := s.Events(ctx, rev-11, 0); !errors.Is(err, datastore.ErrEventsPruned) {
		t.Fatalf("Events(%d) after pruning: %v, want ErrEventsPruned", rev-11, err)
	}
	evs, err = s.Events(ctx, rev-10, 0)
	if err != nil || len(evs) != 10 || evs[0].Revision != rev-9 || evs[9].Revision != rev {
		t.Fatalf("Events(%d): %v, %v; want revisions %d..%d", rev-10, evs, err, rev-9, rev)
	}
	// PruneEvents can go below MaxEvents.
	if err := s.PruneEvents(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if evs, err := s.Events(ctx, rev, 0); err != nil || len(evs) != 0 {
		t.Fatalf("Events(latest) after pruning everything: %v, %v", evs, err)
	}
	if _, err := s.Events(ctx, rev-1, 0); !errors.Is(err, datastore.ErrEventsPruned) {
		t.Fatalf("Events(%d) after pruning everything: %v, want ErrEventsPruned", rev-1, err)
	}
}

// TestFileMode checks that a new file is private whatever the umask, and
// that a file others can read is refused.
func TestFileMode(t *testing.T) {
	_, path := openStore(t, boltstore.Options{})
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Errorf("new datastore has mode %#o, want 0600", perm)
	}
	// No temporary files are left beside it.
	if names, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "*")); len(names) != 1 {
		t.Errorf("directory holds %v, want only the datastore", names)
	}

	loose := filepath.Join(t.TempDir(), "loose.db")
	s, err := boltstore.Open(loose, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(loose, 0o644); err != nil {
		t.Fatal(err)
	}
	if s, err := boltstore.Open(loose, boltstore.Options{}); err == nil {
		s.Close()
		t.Fatal("Open accepted a datastore readable by others")
	}
}

func TestOpenMissingDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "writ.db")
	if s, err := boltstore.Open(path, boltstore.Options{}); err == nil {
		s.Close()
		t.Fatal("Open created a datastore in a directory that does not exist")
	} else if errors.Is(err, datastore.ErrCorrupt) || errors.Is(err, datastore.ErrInUse) {
		t.Fatalf("Open: %v: not a corrupt or busy file", err)
	}
}

// TestJoinTokenHashNotDisclosed checks that no error or log record
// carries a join token's hash, whatever happens to the token, and that
// creating a datastore is logged.
func TestJoinTokenHashNotDisclosed(t *testing.T) {
	var logs bytes.Buffer
	s, _ := openStore(t, boltstore.Options{
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if !strings.Contains(logs.String(), "created new datastore") {
		t.Errorf("creating the datastore was not logged: %q", logs.String())
	}
	ctx := t.Context()
	const hash = "c2VjcmV0LXRva2VuLWhhc2g"
	now := time.Now()
	var errs []error
	tok := &datastore.JoinToken{Hash: hash, SPIFFEID: spiffeid.RequireFromPath(td, "/agent/1"), ExpiresAt: now.Add(-time.Minute)}
	if err := s.CreateJoinToken(ctx, tok); err != nil {
		t.Fatal(err)
	}
	errs = append(errs, s.CreateJoinToken(ctx, tok))
	_, err := s.ConsumeJoinToken(ctx, hash, now)
	errs = append(errs, err)
	_, err = s.ConsumeJoinToken(ctx, hash, now)
	errs = append(errs, err)
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	_, err = s.ConsumeJoinToken(canceled, hash, now)
	errs = append(errs, err)
	for i, err := range errs {
		if err == nil {
			t.Errorf("operation %d succeeded", i)
		} else if strings.Contains(err.Error(), hash) {
			t.Errorf("error %q discloses the hash", err)
		}
	}
	if strings.Contains(logs.String(), hash) {
		t.Errorf("logs disclose the hash: %q", logs.String())
	}
}
