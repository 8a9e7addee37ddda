package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvDSN names the environment variable that points tests at an existing
// server instead of a throwaway cluster.
const EnvDSN = "PG_DSN"

// ErrNoPostgres means no PostgreSQL server binaries were found.
var ErrNoPostgres = errors.New("pgtest: no PostgreSQL server binaries (initdb, pg_ctl) found; install postgresql")

// port is the cluster's port, which only names its socket file.
const port = 5432

// Cluster is a PostgreSQL server for tests.
type Cluster struct {
	// dsn is the connection string of the maintenance database
	// (postgres) as superuser.
	dsn string
	// external is set for a server given by PG_DSN, which tests cannot
	// stop.
	external bool

	binDir  string
	dir     string // the temporary directory: data/ and the socket
	dataDir string
	// runAs is the user the server runs as ("" for the current user).
	runAs string

	mu      sync.Mutex // guards running
	running bool
}

var (
	sharedOnce sync.Once
	shared     *Cluster
	sharedErr  error
)

// Main runs the tests of m and then stops and removes the cluster that
// Shared started, if any. Use it from TestMain.
func Main(m *testing.M) int {
	code := m.Run()
	if shared != nil {
		if err := shared.destroy(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// Shared returns the test binary's cluster, starting it on first use (or
// the server PG_DSN names). The package's TestMain must call Main, which
// removes it.
func Shared(t testing.TB) *Cluster {
	t.Helper()
	sharedOnce.Do(func() {
		if dsn := os.Getenv(EnvDSN); dsn != "" {
			shared = &Cluster{dsn: dsn, external: true}
			return
		}
		shared, sharedErr = start(false)
	})
	if sharedErr != nil {
		fail(t, sharedErr)
	}
	return shared
}

// New starts a cluster of the test's own, which the test may stop and
// start again; it is removed when the test ends. With PG_DSN set the
// test is skipped.
func New(t testing.TB) *Cluster {
	t.Helper()
	return newCluster(t, false)
}

// NewDurable is New with fsync on, as in production, for benchmarks of
// durable writes.
func NewDurable(t testing.TB) *Cluster {
	t.Helper()
	return newCluster(t, true)
}

func newCluster(t testing.TB, durable bool) *Cluster {
	t.Helper()
	if os.Getenv(EnvDSN) != "" {
		t.Skipf("%s is set: this test needs a cluster of its own", EnvDSN)
	}
	c, err := start(durable)
	if err != nil {
		fail(t, err)
	}
	t.Cleanup(func() {
		if err := c.destroy(); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return c
}

func fail(t testing.TB, err error) {
	t.Helper()
	if errors.Is(err, ErrNoPostgres) && os.Getenv("CI") != "true" {
		t.Skipf("skipping: %v", err)
	}
	t.Fatalf("pgtest: %v", err)
}

// findBinDir finds the directory of initdb and pg_ctl: the newest
// /usr/lib/postgresql/<version>/bin, or pg_config --bindir.
func findBinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return vb - va
	})
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dirs = append(dirs, strings.TrimSpace(string(out)))
	}
	for _, d := range dirs {
		if isExecutable(filepath.Join(d, "initdb")) && isExecutable(filepath.Join(d, "pg_ctl")) {
			return d, nil
		}
	}
	return "", ErrNoPostgres
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// start makes and starts a new cluster; durable leaves fsync on.
func start(durable bool) (_ *Cluster, err error) {
	binDir, err := findBinDir()
	if err != nil {
		return nil, err
	}
	reapOrphans(binDir)
	// A short path: the socket's path must fit in sun_path.
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return nil, err
	}
	c := &Cluster{binDir: binDir, dir: dir, dataDir: filepath.Join(dir, "data")}
	defer func() {
		if err != nil {
			_ = c.destroy()
		}
	}()
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		// PostgreSQL refuses to run as root.
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root, but there is no postgres user to run the server as: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
		c.runAs = "postgres"
	}
	if err := c.run("initdb", "-D", c.dataDir, "-U", "postgres", "-E", "UTF8", "--locale=C",
		"--auth-local=trust", "--auth-host=reject", "--no-sync", "--no-instructions"); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`
listen_addresses = ''
unix_socket_directories = '%s'
unix_socket_permissions = 0700
port = %d
max_connections = 200
logging_collector = off
`, dir, port)
	if !durable {
		// Commits still reach the kernel, so a stop (a crash of the
		// server, not of the machine) loses nothing.
		conf += "fsync = off\nfull_page_writes = off\n"
	}
	if err := c.appendFile("postgresql.conf", conf); err != nil {
		return nil, err
	}
	// The superuser connects without a password; every other role
	// must give one.
	hba := "local all postgres trust\nlocal all all scram-sha-256\n"
	if err := c.writeFile("pg_hba.conf", hba); err != nil {
		return nil, err
	}
	c.dsn = fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable", dir, port)
	if err := c.start(); err != nil {
		return nil, err
	}
	return c, nil
}

const (
	// dirPrefix starts the name of every cluster's directory.
	dirPrefix = "wpg"
	// ownerFile holds the PID of the test process that made the cluster.
	ownerFile = "owner"
)

// reapOrphans stops and removes the clusters of test processes that died
// without removing them (killed, or timed out).
func reapOrphans(binDir string) {
	owners, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*", ownerFile))
	for _, f := range owners {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 || pid == os.Getpid() || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue
		}
		dir := filepath.Dir(f)
		c := &Cluster{binDir: binDir, dir: dir, dataDir: filepath.Join(dir, "data"), running: true}
		if fi, err := os.Stat(c.dataDir); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
				if u, err := user.LookupId(strconv.Itoa(int(st.Uid))); err == nil {
					c.runAs = u.Username
				}
			}
		}
		_ = c.stop() // fails harmlessly if the server is not running
		_ = os.RemoveAll(dir)
	}
}

// run runs a PostgreSQL program as the server's user.
func (c *Cluster) run(prog string, args ...string) error {
	path := filepath.Join(c.binDir, prog)
	var cmd *exec.Cmd
	if c.runAs != "" {
		cmd = exec.Command("runuser", append([]string{"-u", c.runAs, "--", path}, args...)...)
	} else {
		cmd = exec.Command(path, args...)
	}
	cmd.Dir = c.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", prog, strings.Join(args, " "), err, out)
	}
	return nil
}

func (c *Cluster) appendFile(name, text string) error {
	f, err := os.OpenFile(filepath.Join(c.dataDir, name), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(text)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (c *Cluster) writeFile(name, text string) error {
	// The file exists (initdb made it), owned by the server's user.
	f, err := os.OpenFile(filepath.Join(c.dataDir, name), os.O_TRUNC|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(text)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (c *Cluster) start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running {
		return nil
	}
	logFile := filepath.Join(c.dir, "server.log")
	if c.runAs != "" {
		// The log is written by the server's user.
		if f, err := os.OpenFile(logFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600); err == nil {
			_ = f.Close()
			u, _ := user.Lookup(c.runAs)
			uid, _ := strconv.Atoi(u.Uid)
			gid, _ := strconv.Atoi(u.Gid)
			_ = os.Chown(logFile, uid, gid)
		}
	}
	if err := c.run("pg_ctl", "-D", c.dataDir, "-l", logFile, "-w", "-t", "60", "start"); err != nil {
		log, _ := os.ReadFile(logFile)
		return fmt.Errorf("start PostgreSQL: %w\nserver log:\n%s", err, log)
	}
	c.running = true
	return nil
}

func (c *Cluster) stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.running {
		return nil
	}
	if err := c.run("pg_ctl", "-D", c.dataDir, "-m", "immediate", "-w", "stop"); err != nil {
		return fmt.Errorf("stop PostgreSQL: %w", err)
	}
	c.running = false
	return nil
}

// destroy stops the cluster and removes its directory.
func (c *Cluster) destroy() error {
	if c.external {
		return nil
	}
	err := c.stop()
	if rerr := os.RemoveAll(c.dir); err == nil {
		err = rerr
	}
	return err
}

// Stop stops the server at once (as a crash would), closing every
// connection. Only clusters from New can be stopped.
func (c *Cluster) Stop(t testing.TB) {
	t.Helper()
	if c.external || c == shared {
		t.Fatal("pgtest: only a cluster from New can be stopped")
	}
	if err := c.stop(); err != nil {
		t.Fatal(err)
	}
}

// Start starts the server again after Stop.
func (c *Cluster) Start(t testing.TB) {
	t.Helper()
	if err := c.start(); err != nil {
		t.Fatal(err)
	}
}

// SuperuserDSN returns the connection string of the maintenance database
// as superuser.
func (c *Cluster) SuperuserDSN() string { return c.dsn }

// NewDatabase creates a new, empty database and returns its connection
// string (as superuser). It is dropped when the test ends.
func (c *Cluster) NewDatabase(t testing.TB) string {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "writ_test_" + hex.EncodeToString(b[:])
	c.Exec(t, "CREATE DATABASE "+name)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	return WithDatabase(c.dsn, name)
}

// Exec runs SQL statements in the maintenance database as superuser.
func (c *Cluster) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	// Not t.Context(): Exec may run in a cleanup, after it is canceled.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.exec(ctx, sql, args...); err != nil {
		t.Fatalf("pgtest: %s: %v", sql, err)
	}
}

func (c *Cluster) exec(ctx context.Context, sql string, args ...any) error {
	conn, err := pgx.Connect(ctx, c.dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

// WithDatabase returns dsn, a URL or keyword/value connection string,
// naming database name instead.
func WithDatabase(dsn, name string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err == nil {
			u.Path = "/" + name
			return u.String()
		}
	}
	return dsn + " dbname=" + name
}

// StartCluster starts a throwaway cluster outside a test, for programs
// such as benchmarks, with fsync on (as in production) if durable. The
// caller must Destroy it.
func StartCluster(durable bool) (*Cluster, error) { return start(durable) }

// Destroy stops a cluster from StartCluster and removes its directory.
func (c *Cluster) Destroy() error { return c.destroy() }

// ExecContext runs an SQL statement in the maintenance database as
// superuser.
func (c *Cluster) ExecContext(ctx context.Context, sql string, args ...any) error {
	return c.exec(ctx, sql, args...)
}

// Available returns ErrNoPostgres if no PostgreSQL server binaries are
// found, so that a test can skip (or fail in CI) before starting work.
func Available() error {
	_, err := findBinDir()
	return err
}
