package pgstore

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrSchemaTooNew means the database's schema was made by a newer version
// of Writ than this one; Open refuses it rather than guess.
var ErrSchemaTooNew = errors.New("pgstore: database schema is newer than this version of Writ supports")

// migrationLockKey is the pg_advisory_lock key that serializes migrations
// of one database ("writ" in ASCII).
const migrationLockKey int64 = 0x77726974

// migrationFiles are the schema migrations, NNNN_name.sql, applied in
// order; each runs in one transaction and records its version in
// writ_schema_migrations.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

type migration struct {
	version int
	name    string
	sql     string
}

// migrations returns the embedded migrations in version order; their
// versions must run 1, 2, 3, ...
func migrations() ([]migration, error) {
	names, err := fs.Glob(migrationFiles, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, name := range names {
		base := path.Base(name)
		num, _, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration %s: name must start with its version", base)
		}
		b, err := migrationFiles.ReadFile(name)
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: base, sql: string(b)})
	}
	slices.SortFunc(out, func(a, b migration) int { return a.version - b.version })
	for i, m := range out {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %s: version %d, want %d", m.name, m.version, i+1)
		}
	}
	return out, nil
}

// SchemaVersion is the schema version this package migrates databases
// to.
func SchemaVersion() int {
	ms, err := migrations()
	if err != nil {
		panic("pgstore: embedded migrations: " + err.Error())
	}
	return len(ms)
}

// migrate brings the schema up to date, holding an advisory lock so that
// of several servers opening the database at once, one migrates and the
// others then find the work done. A schema newer than this package's is
// refused before anything is written.
func migrate(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) (err error) {
	ms, err := migrations()
	if err != nil {
		return err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrationLockKey); err != nil {
		conn.Release()
		return fmt.Errorf("lock the schema: %w", err)
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, uerr := conn.Exec(uctx, "SELECT pg_advisory_unlock($1)", migrationLockKey); uerr != nil {
			// Closing the session releases the lock.
			_ = conn.Hijack().Close(uctx)
			return
		}
		conn.Release()
	}()

	current, err := schemaVersion(ctx, conn.Conn())
	if err != nil {
		return err
	}
	if current > len(ms) {
		return fmt.Errorf("the database has schema version %d, this version of Writ knows up to %d (upgrade Writ): %w", current, len(ms), ErrSchemaTooNew)
	}
	for _, m := range ms[current:] {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			// No arguments: the simple protocol, which runs every
			// statement of the file.
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO writ_schema_migrations (version) VALUES ($1)", m.version)
			return err
		})
		if err != nil {
			return fmt.Errorf("apply schema migration %s: %w", m.name, err)
		}
		log.Info("applied datastore schema migration", "version", m.version, "migration", m.name)
	}
	return nil
}

// schemaVersion returns the latest version applied to the database, 0 for
// a database without Writ's schema.
func schemaVersion(ctx context.Context, conn *pgx.Conn) (int, error) {
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('writ_schema_migrations') IS NOT NULL").Scan(&exists); err != nil {
		return 0, fmt.Errorf("read the schema version: %w", err)
	}
	if !exists {
		return 0, nil
	}
	var v int
	if err := conn.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM writ_schema_migrations").Scan(&v); err != nil {
		return 0, fmt.Errorf("read the schema version: %w", err)
	}
	return v, nil
}
