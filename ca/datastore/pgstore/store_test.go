package pgstore_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/datastore/datastoretest"
	"writ.dev/writ/ca/datastore/pgstore"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// testLogger routes the store's logs to t.Log.
type testLogger struct{ t testing.TB }

func (l testLogger) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func open(t testing.TB, dsn string) *pgstore.Store {
	t.Helper()
	s, err := pgstore.Open(t.Context(), pgstore.Config{
		ConnString: dsn,
		Logger:     slog.New(slog.NewTextHandler(testLogger{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestConformance(t *testing.T) {
	c := pgtest.Shared(t)
	datastoretest.Run(t, func(t *testing.T) datastore.Store {
		return open(t, c.NewDatabase(t))
	})
}

func TestShared(t *testing.T) {
	c := pgtest.Shared(t)
	datastoretest.RunShared(t, func(t *testing.T) (datastore.Store, datastore.Store) {
		dsn := c.NewDatabase(t)
		return open(t, dsn), open(t, dsn)
	})
}

// query runs one query on dsn and scans its single row.
func query(t testing.TB, dsn, sql string, dst ...any) {
	t.Helper()
	ctx := context.WithoutCancel(t.Context())
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, sql).Scan(dst...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func exec(t testing.TB, dsn, sql string) {
	t.Helper()
	ctx := context.WithoutCancel(t.Context())
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// TestConcurrentOpenMigratesOnce opens one empty database from many
// goroutines at once: every Open succeeds and each migration is applied
// once.
func TestConcurrentOpenMigratesOnce(t *testing.T) {
	dsn := pgtest.Shared(t).NewDatabase(t)
	const n = 8
	var wg sync.WaitGroup
	stores := make([]*pgstore.Store, n)
	errs := make([]error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			stores[i], errs[i] = pgstore.Open(t.Context(), pgstore.Config{ConnString: dsn})
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Open %d: %v", i, err)
			continue
		}
		defer stores[i].Close()
	}
	var rows, maxVersion, metaRows int
	query(t, dsn, "SELECT count(*), max(version) FROM writ_schema_migrations", &rows, &maxVersion)
	if rows != pgstore.SchemaVersion() || maxVersion != pgstore.SchemaVersion() {
		t.Errorf("writ_schema_migrations has %d rows up to version %d, want %d", rows, maxVersion, pgstore.SchemaVersion())
	}
	query(t, dsn, "SELECT count(*) FROM writ_meta", &metaRows)
	if metaRows != 1 {
		t.Errorf("writ_meta has %d rows, want 1", metaRows)
	}
	// And they all work on the one schema.
	if errs[0] == nil && errs[1] == nil {
		if err := stores[0].CreateAgent(t.Context(), &datastore.Agent{SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/a")}); err != nil {
			t.Fatal(err)
		}
		if _, err := stores[1].FetchAgent(t.Context(), spiffeid.RequireFromString("spiffe://example.org/a")); err != nil {
			t.Fatal(err)
		}
	}
}

// TestNewerSchemaRefused opens a database whose schema version is beyond
// this package's: Open fails with ErrSchemaTooNew and writes nothing.
func TestNewerSchemaRefused(t *testing.T) {
	dsn := pgtest.Shared(t).NewDatabase(t)
	newer := pgstore.SchemaVersion() + 1
	exec(t, dsn, fmt.Sprintf(`CREATE TABLE writ_schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
		INSERT INTO writ_schema_migrations (version) VALUES (%d)`, newer))
	var before string
	query(t, dsn, "SELECT string_agg(version::text || '@' || applied_at::text, ',') FROM writ_schema_migrations", &before)

	_, err := pgstore.Open(t.Context(), pgstore.Config{ConnString: dsn})
	if !errors.Is(err, pgstore.ErrSchemaTooNew) {
		t.Fatalf("Open: got %v, want ErrSchemaTooNew", err)
	}
	var after string
	var tables int
	query(t, dsn, "SELECT string_agg(version::text || '@' || applied_at::text, ',') FROM writ_schema_migrations", &after)
	query(t, dsn, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'", &tables)
	if after != before || tables != 1 {
		t.Errorf("Open wrote to the database: versions %q -> %q, %d tables", before, after, tables)
	}
}

// TestPassword checks that Config.Password replaces the connection
// string's, and that no error shows it.
func TestPassword(t *testing.T) {
	c := pgtest.Shared(t)
	const role, secret = "writ_pw_test", "s3cret-Pa55"
	c.Exec(t, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", role, secret))
	// Cleanups run last first: the database goes before the role.
	t.Cleanup(func() { c.Exec(t, "DROP ROLE "+role) })
	dsn := c.NewDatabase(t)
	exec(t, dsn, "GRANT ALL ON SCHEMA public TO "+role)

	userDSN := dsn + " user=" + role + " password=wrong-" + secret
	_, err := pgstore.Open(t.Context(), pgstore.Config{ConnString: userDSN})
	if err == nil {
		t.Fatal("Open with a wrong password succeeded")
	}
	if strings.Contains(err.Error(), secret) {
		t.Errorf("the error shows the password: %v", err)
	}
	s, err := pgstore.Open(t.Context(), pgstore.Config{ConnString: userDSN, Password: secret})
	if err != nil {
		t.Fatalf("Open with Config.Password: %v", err)
	}
	defer s.Close()
	if _, err := s.ListAgents(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func TestServers(t *testing.T) {
	dsn := pgtest.Shared(t).NewDatabase(t)
	a, b := open(t, dsn), open(t, dsn)
	ctx := t.Context()
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
	list, err := a.ListServers(ctx)
	if err != nil || len(list) != 0 {
		t.Fatalf("ListServers of a new store: %v, %v", list, err)
	}
	rev := latest(t, a)
	ch, stop := b.Watch()
	defer stop()

	s2 := &datastore.Server{ID: "srv-2", Address: "10.0.0.2:8081", Version: "1.0", StartedAt: t0, Heartbeat: t0}
	s1 := &datastore.Server{ID: "srv-1", Address: "10.0.0.1:8081", Version: "1.0", StartedAt: t0, Heartbeat: t0}
	for _, s := range []*datastore.Server{s2, s1} {
		if err := a.PutServer(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	// Replace by ID.
	s2b := *s2
	s2b.Heartbeat = t0.Add(time.Minute)
	s2b.Version = "1.1"
	if err := b.PutServer(ctx, &s2b); err != nil {
		t.Fatal(err)
	}
	list, err = a.ListServers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || *list[0] != *s1 || !list[1].Heartbeat.Equal(s2b.Heartbeat) || list[1].Version != "1.1" || list[1].ID != "srv-2" {
		t.Errorf("ListServers: got %+v %+v", list[0], list[1])
	}
	if err := a.PutServer(ctx, &datastore.Server{}); !errors.Is(err, entry.ErrInvalid) {
		t.Errorf("PutServer without an ID: %v, want entry.ErrInvalid", err)
	}
	// No event, no signal.
	if evs, err := a.Events(ctx, rev, 10); err != nil || len(evs) != 0 {
		t.Errorf("PutServer logged events: %+v, %v", evs, err)
	}
	select {
	case <-ch:
		t.Error("PutServer signaled a watcher")
	case <-time.After(100 * time.Millisecond):
	}
}

func latest(t testing.TB, s datastore.Store) uint64 {
	t.Helper()
	snap, err := s.Snapshot(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return snap.Revision
}

// TestForgedNotifications: NOTIFY needs no privilege, so a role that may
// only connect can notify writ_changes with any payload. Such
// notifications signal no watcher, and a forged huge revision does not
// stop the safety poll from seeing a change whose notification was lost;
// a change through another Store still signals at once.
func TestForgedNotifications(t *testing.T) {
	c := pgtest.Shared(t)
	const role, secret = "writ_forger", "f0rger-Pa55"
	c.Exec(t, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", role, secret))
	t.Cleanup(func() { c.Exec(t, "DROP ROLE "+role) })
	dsn := c.NewDatabase(t)
	ctx := t.Context()

	clk := fakeclock.New(time.Now())
	s, err := pgstore.Open(ctx, pgstore.Config{
		ConnString: dsn, Clock: clk,
		Logger: slog.New(slog.NewTextHandler(testLogger{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ch, stop := s.Watch()
	defer stop()
	start := latest(t, s)

	forger, err := pgx.Connect(ctx, dsn+" user="+role+" password="+secret)
	if err != nil {
		t.Fatal(err)
	}
	defer forger.Close(context.WithoutCancel(ctx))
	for i := range 50 {
		payload := []string{"9223372036854775807", "-1", "x", ""}[i%4]
		if _, err := forger.Exec(ctx, "SELECT pg_notify('writ_changes', $1)", payload); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-ch:
		t.Fatal("a forged notification signaled a watcher")
	case <-time.After(time.Second):
	}
	if evs, err := s.Events(ctx, start, 10); err != nil || len(evs) != 0 {
		t.Fatalf("events after forged notifications: %+v, %v", evs, err)
	}

	// A committed change whose notification was lost: the safety poll
	// finds it.
	exec(t, dsn, "UPDATE writ_meta SET revision = revision + 1")
	if err := clk.WaitForTimerWithin(ctx, pgstore.SafetyPoll); err != nil {
		t.Fatal(err)
	}
	clk.Advance(pgstore.SafetyPoll)
	waitSignal(t, "the safety poll after forged notifications", ch, 30*time.Second)

	// A change through another Store signals at once.
	b := open(t, dsn)
	if _, err := createEntry(ctx, b, "/after-forgery"); err != nil {
		t.Fatal(err)
	}
	waitSignal(t, "a change through another Store", ch, 30*time.Second)
}

// TestRevisionlessChangeAcrossRole: a change that takes no revision (a
// CA key) through one Store signals another Store's watchers, when both
// connect as an ordinary role that owns the tables, not a superuser:
// the notification is trusted because its sender's role may write the
// store.
func TestRevisionlessChangeAcrossRole(t *testing.T) {
	c := pgtest.Shared(t)
	const role, secret = "writ_owner_test", "0wner-Pa55"
	c.Exec(t, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", role, secret))
	t.Cleanup(func() { c.Exec(t, "DROP ROLE "+role) })
	dsn := c.NewDatabase(t)
	exec(t, dsn, "GRANT ALL ON SCHEMA public TO "+role)
	userDSN := dsn + " user=" + role + " password=" + secret
	a, b := open(t, userDSN), open(t, userDSN)
	var super bool
	query(t, userDSN, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user", &super)
	if super {
		t.Fatal("the test role is a superuser")
	}
	ch, stop := b.Watch()
	defer stop()
	drain(ch)
	if err := a.PutCAKey(t.Context(), &datastore.CAKey{ID: "k", Kind: datastore.CAKeyJWT, State: datastore.CAKeyActive, ServerID: "a"}); err != nil {
		t.Fatal(err)
	}
	waitSignal(t, "b's watch after a's PutCAKey", ch, 30*time.Second)
}
