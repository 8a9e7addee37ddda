package pgtest_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"writ.dev/writ/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func query(t *testing.T, dsn string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	var db string
	err = conn.QueryRow(ctx, "SELECT current_database()").Scan(&db)
	return db, err
}

func TestDatabasesAreSeparate(t *testing.T) {
	c := pgtest.Shared(t)
	a, b := c.NewDatabase(t), c.NewDatabase(t)
	dbA, err := query(t, a)
	if err != nil {
		t.Fatal(err)
	}
	dbB, err := query(t, b)
	if err != nil {
		t.Fatal(err)
	}
	if dbA == dbB {
		t.Fatalf("two NewDatabase calls gave the same database %q", dbA)
	}
}

func TestStopStart(t *testing.T) {
	c := pgtest.New(t)
	dsn := c.NewDatabase(t)
	if _, err := query(t, dsn); err != nil {
		t.Fatal(err)
	}
	c.Stop(t)
	if _, err := query(t, dsn); err == nil {
		t.Fatal("connected to a stopped cluster")
	}
	c.Start(t)
	if _, err := query(t, dsn); err != nil {
		t.Fatalf("after Start: %v", err)
	}
}

func TestPasswordRequiredForOtherRoles(t *testing.T) {
	c := pgtest.Shared(t)
	dsn := c.NewDatabase(t)
	c.Exec(t, "CREATE ROLE pgtest_user LOGIN PASSWORD 'right'")
	t.Cleanup(func() { c.Exec(t, "DROP ROLE pgtest_user") })
	if _, err := query(t, dsn+" user=pgtest_user password=wrong"); err == nil {
		t.Fatal("a wrong password was accepted")
	}
	if _, err := query(t, dsn+" user=pgtest_user password=right"); err != nil {
		t.Fatalf("with the right password: %v", err)
	}
}
