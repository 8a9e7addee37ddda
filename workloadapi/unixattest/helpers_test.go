//go:build linux

package unixattest_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
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
	"writ.dev/writ/internal/testuser"

	"golang.org/x/sys/unix"

	"writ.dev/writ/ca/entry"
	"writ.dev/writ/internal/peercred"
	"writ.dev/writ/internal/pidns"
	"writ.dev/writ/workloadapi/unixattest"
)

// The test binary doubles as the child process the tests attest: started
// with envMode set, TestMain runs childMain instead of the tests.
const (
	envMode = "UNIXATTEST_CHILD" // "connect" or "inherit"
	envSock = "UNIXATTEST_SOCK"  // socket to connect to
	envFD   = "UNIXATTEST_FD"    // inherited connection
	envExec = "UNIXATTEST_EXEC"  // program to exec on 'e'
	envUID  = "UNIXATTEST_UID"   // ids to switch to on 'u'
	envGID  = "UNIXATTEST_GID"
)

// Child protocol: after connecting the child writes 'r' ('i' when it
// inherited the connection across exec), then obeys one-byte commands:
// 'x' exit; 'e' exec envExec keeping the connection; 'u' switch to envUID
// and envGID, then write 'u'; 'p' write 'p'.
func TestMain(m *testing.M) {
	pidns.HoldIfAsked()
	if mode := os.Getenv(envMode); mode != "" {
		os.Exit(childMain(mode))
	}
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func childMain(mode string) int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "unixattest child:", err)
		return 2
	}
	var (
		conn  net.Conn
		hello byte
		err   error
	)
	switch mode {
	case "connect":
		conn, err = net.Dial("unix", os.Getenv(envSock))
		hello = 'r'
	case "inherit":
		var fd int
		if fd, err = strconv.Atoi(os.Getenv(envFD)); err == nil {
			f := os.NewFile(uintptr(fd), "conn")
			conn, err = net.FileConn(f)
			f.Close()
		}
		hello = 'i'
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		return fail(err)
	}
	if _, err := conn.Write([]byte{hello}); err != nil {
		return fail(err)
	}
	b := make([]byte, 1)
	for {
		if _, err := conn.Read(b); err != nil {
			return 0
		}
		switch b[0] {
		case 'x':
			return 0
		case 'e':
			return fail(execKeepingConn(conn.(*net.UnixConn)))
		case 'u':
			uid, _ := strconv.Atoi(os.Getenv(envUID))
			gid, _ := strconv.Atoi(os.Getenv(envGID))
			if err := syscall.Setgroups([]int{gid}); err != nil {
				return fail(err)
			}
			if err := syscall.Setresgid(gid, gid, gid); err != nil {
				return fail(err)
			}
			if err := syscall.Setresuid(uid, uid, uid); err != nil {
				return fail(err)
			}
			conn.Write([]byte{'u'})
		case 'p':
			conn.Write([]byte{'p'})
		}
	}
}

// execKeepingConn executes envExec in mode "inherit", passing it conn.
func execKeepingConn(conn *net.UnixConn) error {
	f, err := conn.File()
	if err != nil {
		return err
	}
	fd := f.Fd()
	if _, err := unix.FcntlInt(fd, unix.F_SETFD, 0); err != nil {
		return err
	}
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, envMode+"=") || strings.HasPrefix(kv, envFD+"=")
	})
	env = append(env, envMode+"=inherit", envFD+"="+strconv.Itoa(int(fd)))
	path := os.Getenv(envExec)
	return syscall.Exec(path, []string{path}, env)
}

// child is a running child process connected to the test.
type child struct {
	cmd  *exec.Cmd
	path string        // the executable it was started from
	conn *net.UnixConn // the test's end of its connection
	cred peercred.Cred // the peer credentials of conn
	eof  chan struct{} // closed when the child has closed its end
	buf  chan byte     // bytes the child wrote
}

// startChild starts bin (a copy of the test binary) as a child connected
// to the test, running with cred if not nil.
func startChild(t testing.TB, bin string, cred *syscall.Credential, env ...string) *child {
	t.Helper()
	dir := publicTempDir(t)
	sock := filepath.Join(dir, "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := os.Chmod(sock, 0o777); err != nil {
		t.Fatal(err)
	}
	var cmd *exec.Cmd
	for attempt := 0; ; attempt++ {
		cmd = exec.Command(bin)
		cmd.Dir = "/"
		// The race detector waits a second at exit by default.
		cmd.Env = append(os.Environ(), envMode+"=connect", envSock+"="+sock, "GORACE=atexit_sleep_ms=0")
		cmd.Env = append(cmd.Env, env...)
		cmd.Stderr = os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
		err := cmd.Start()
		if err == nil {
			break
		}
		// A file just copied may still be open for writing in a process
		// forked meanwhile (golang.org/issue/22315).
		if errors.Is(err, syscall.ETXTBSY) && attempt < 100 {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		t.Fatal(err)
	}
	c := &child{cmd: cmd, path: bin, eof: make(chan struct{}), buf: make(chan byte, 16)}
	t.Cleanup(c.kill)
	l.SetDeadline(time.Now().Add(30 * time.Second))
	c.conn, err = l.AcceptUnix()
	if err != nil {
		t.Fatalf("child did not connect: %v", err)
	}
	t.Cleanup(func() { c.conn.Close() })
	go c.read()
	c.expect(t, 'r')
	if c.cred, err = peercred.FromConn(c.conn); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *child) read() {
	b := make([]byte, 1)
	for {
		if _, err := c.conn.Read(b); err != nil {
			close(c.eof)
			return
		}
		c.buf <- b[0]
	}
}

func (c *child) expect(t testing.TB, want byte) {
	t.Helper()
	select {
	case got := <-c.buf:
		if got != want {
			t.Fatalf("child wrote %q, want %q", got, want)
		}
	case <-c.eof:
		t.Fatalf("child closed the connection, want %q", want)
	case <-time.After(30 * time.Second):
		t.Fatalf("child did not write %q", want)
	}
}

// do sends cmd to the child and, unless reply is 0, waits for reply.
func (c *child) do(t testing.TB, cmd, reply byte) {
	t.Helper()
	if _, err := c.conn.Write([]byte{cmd}); err != nil {
		t.Fatal(err)
	}
	if reply != 0 {
		c.expect(t, reply)
	}
}

// exit makes the child exit and waits until it has closed its end of the
// connection. It is then a zombie until reaped by wait.
func (c *child) exit(t testing.TB) {
	t.Helper()
	c.do(t, 'x', 0)
	select {
	case <-c.eof:
	case <-time.After(30 * time.Second):
		t.Fatal("child did not exit")
	}
}

func (c *child) wait(t testing.TB) {
	t.Helper()
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
}

func (c *child) kill() {
	if c.cmd.ProcessState == nil {
		c.cmd.Process.Kill()
		c.cmd.Wait()
	}
}

// publicTempDir returns a short new directory that every user can enter.
func publicTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ua")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

// publicBin returns a copy of the test binary that every user can run. It
// is another inode than the test binary itself.
func publicBin(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "uabin"); binErr != nil {
			return
		}
		if binErr = os.Chmod(binDir, 0o755); binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "child")
		binErr = copyFile(selfExe(t), binPath)
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// copyBin copies the test binary to name in a new public directory.
func copyBin(t testing.TB, name string) string {
	t.Helper()
	dst := filepath.Join(publicTempDir(t), name)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := copyFile(selfExe(t), dst); err != nil {
		t.Fatal(err)
	}
	return dst
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func selfExe(t testing.TB) string {
	t.Helper()
	p, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func fileSHA256(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func selfCred() peercred.Cred {
	return peercred.Cred{PID: int32(os.Getpid()), UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
}

// wantSelectors computes, independently of the package, the selectors of
// a process with the given ids running the file at path.
func wantSelectors(t testing.TB, uid, gid uint32, groups []uint32, path string) []entry.Selector {
	t.Helper()
	var want []string
	add := func(s string) { want = append(want, "unix:"+s) }
	add(fmt.Sprint("uid:", uid))
	add(fmt.Sprint("gid:", gid))
	if u, err := user.LookupId(fmt.Sprint(uid)); err == nil {
		add("user:" + u.Username)
	}
	if g, err := user.LookupGroupId(fmt.Sprint(gid)); err == nil {
		add("group:" + g.Name)
	}
	for _, g := range groups {
		add(fmt.Sprint("supplementary_gid:", g))
		if gr, err := user.LookupGroupId(fmt.Sprint(g)); err == nil {
			add("supplementary_group:" + gr.Name)
		}
	}
	add("path:" + path)
	add("sha256:" + fileSHA256(t, path))
	var sel []entry.Selector
	for _, s := range want {
		parsed, err := entry.ParseSelector(s)
		if err != nil {
			t.Fatalf("expected selector %q: %v", s, err)
		}
		sel = append(sel, parsed)
	}
	slices.SortFunc(sel, entry.Selector.Compare)
	return slices.Compact(sel)
}

func checkSelectors(t testing.TB, p *unixattest.Process, want []entry.Selector) {
	t.Helper()
	got, err := p.Selectors(context.Background())
	if err != nil {
		t.Fatalf("Selectors: %v", err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("Selectors =\n  %v\nwant\n  %v", got, want)
	}
	if !slices.IsSortedFunc(got, entry.Selector.Compare) {
		t.Error("selectors are not sorted")
	}
}

// testLogger sends the attestor's records to t.Log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// pinner is one way of pinning a child: each test runs with all of them.
type pinner struct {
	name string
	new  func(unixattest.Config) *unixattest.Attestor
	pin  func(*unixattest.Attestor, *child) (*unixattest.Process, error)
}

var pinners = []pinner{
	{"Pin", unixattest.New, func(a *unixattest.Attestor, c *child) (*unixattest.Process, error) { return a.Pin(c.cred) }},
	{"PinConn", unixattest.New, func(a *unixattest.Attestor, c *child) (*unixattest.Process, error) { return a.PinConn(c.conn) }},
	{"no pidfd", unixattest.NewWithoutPidfd, func(a *unixattest.Attestor, c *child) (*unixattest.Process, error) { return a.PinConn(c.conn) }},
}

func mustPin(t testing.TB, pn pinner, a *unixattest.Attestor, c *child) *unixattest.Process {
	t.Helper()
	p, err := pn.pin(a, c)
	if err != nil {
		t.Fatalf("%s: %v", pn.name, err)
	}
	t.Cleanup(func() { p.Close() })
	if err := p.Check(); err != nil {
		t.Fatalf("Check just after pinning: %v", err)
	}
	return p
}

// eventuallyChanged waits until Check reports ErrProcessChanged.
func eventuallyChanged(t testing.TB, p *unixattest.Process) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := p.Check()
		if errors.Is(err, unixattest.ErrProcessChanged) {
			t.Logf("Check: %v", err)
			return
		}
		if err != nil {
			t.Fatalf("Check = %v, want ErrProcessChanged", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("Check still passes")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func resolved(t testing.TB, path string) string {
	t.Helper()
	p, err := filepath.EvalSymlinks(path)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func requireRoot(t testing.TB) { testuser.RequireRoot(t) }

func testUser(t testing.TB) (uid, gid uint32) { return testuser.Lookup(t) }
