// Package pgtest gives tests a throwaway PostgreSQL server: a new cluster
// in a temporary directory, made with the machine's PostgreSQL binaries
// (/usr/lib/postgresql/<version>/bin, or pg_config --bindir), listening
// only on a Unix socket in that directory, with fsync off (commits still
// reach the kernel, so Stop, a crash of the server, loses nothing), and stopped
// and removed when the tests end (a cluster left behind by a test process
// that was killed is removed by the next one to start a cluster). Each
// test gets a database of its own.
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
//	func TestX(t *testing.T) {
//		dsn := pgtest.Shared(t).NewDatabase(t)
//		...
//	}
//
// PostgreSQL refuses to run as root, so when the tests run as root the
// cluster runs as the postgres user (runuser -u postgres). The superuser
// role "postgres" connects over the socket without a password; other
// roles need one (scram-sha-256), so tests can check password handling.
//
// Programs that are not tests (benchmarks) start a cluster with
// StartCluster and remove it with Destroy.
//
// If PG_DSN is set, tests use that server instead (Shared returns it, and
// New skips, since it cannot be stopped and started). If no PostgreSQL
// binaries are found, tests skip, or fail when CI=true.
package pgtest
