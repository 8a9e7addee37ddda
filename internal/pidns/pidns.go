//go:build linux

package pidns

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// envInside names the test that runs in the namespace.
	envInside = "WRIT_PIDNS_TEST"
	// envHold makes the test binary an impostor (HoldIfAsked).
	envHold = "WRIT_PIDNS_HOLD"
)

// unavailable skips the test for reason, or fails it in CI.
func unavailable(t testing.TB, reason string, err error) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%s: %v (CI runs as root, where this must work)", reason, err)
	}
	t.Skipf("%s: %v", reason, err)
}

// Enter runs test t again, alone, in a new PID and mount namespace, and
// reports false once it has: t passes, fails or is skipped as it did
// there. In that run, where the test is PID 1 and /proc is the
// namespace's own, Enter reports true, and the test goes on.
func Enter(t *testing.T) bool {
	t.Helper()
	if os.Getenv(envInside) == t.Name() {
		if os.Getpid() != 1 {
			t.Fatalf("pidns: %s=%s, but this is pid %d, not 1 of a new PID namespace", envInside, t.Name(), os.Getpid())
		}
		// The mount namespace is private (Unshareflags below): this /proc
		// is seen by this namespace only.
		if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			unavailable(t, "pidns: cannot mount /proc in a new PID namespace", err)
		}
		return true
	}
	if os.Geteuid() != 0 {
		unavailable(t, "pidns: a new PID namespace needs root", errors.New("not root"))
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(t.Name(), "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	timeout := 2 * time.Minute
	if d, ok := t.Deadline(); ok {
		timeout = min(timeout, time.Until(d)-5*time.Second)
	}
	if timeout < time.Second {
		t.Fatal("pidns: too little time left before the test deadline to run the test in a PID namespace")
	}
	cmd := exec.Command(self, "-test.run="+strings.Join(parts, "/"), "-test.v=true", "-test.count=1",
		"-test.timeout="+timeout.String())
	// The race detector waits a second at exit by default.
	cmd.Env = append(os.Environ(), envInside+"="+t.Name(), "GORACE=atexit_sleep_ms=0")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWPID,
		// Unshared mount namespaces are made private (MS_REC|MS_PRIVATE on
		// /) by os/exec, so that the /proc mounted there stays there.
		Unshareflags: syscall.CLONE_NEWNS,
		Pdeathsig:    syscall.SIGKILL,
	}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOSPC) {
		unavailable(t, "pidns: cannot create a PID namespace", err)
	}
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("pidns: run %s in a new PID namespace: %v", t.Name(), err)
	}
	t.Logf("%s, run in a new PID namespace:\n%s", t.Name(), out)
	if err != nil {
		t.Fatalf("%s failed in its PID namespace: %v", t.Name(), err)
	}
	if strings.Contains(string(out), "--- SKIP: "+t.Name()+" ") {
		t.Skip("skipped in its PID namespace (see above)")
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()+" ") {
		t.Fatalf("%s did not run in its PID namespace", t.Name())
	}
	return false
}

// StartAt starts cmd as process pid of the namespace Enter made, or
// fails the test: pid must be free (its process reaped), and no other
// process may be started meanwhile.
func StartAt(t testing.TB, cmd *exec.Cmd, pid int) {
	t.Helper()
	if os.Getpid() != 1 {
		t.Fatal("pidns: StartAt outside the namespace Enter made")
	}
	if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
		t.Fatalf("pidns: choose the next PID: %v", err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if got := cmd.Process.Pid; got != pid {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("pidns: the new process is pid %d, not %d", got, pid)
	}
}

// StartImpostor starts, as process pid, this test binary doing nothing
// (HoldIfAsked) until the test ends: a process with the same executable
// and credentials as the test's children, but not one of them. It
// returns once the process runs that binary.
func StartImpostor(t testing.TB, pid int) *exec.Cmd {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), envHold+"=1", "GORACE=atexit_sleep_ms=0")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	StartAt(t, cmd, pid)
	t.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
	})
	b := make([]byte, 1)
	if _, err := io.ReadFull(stdout, b); err != nil || b[0] != 'r' {
		t.Fatalf("pidns: the impostor did not start: %q, %v", b, err)
	}
	return cmd
}

// HoldIfAsked, called first in TestMain, makes the test binary started
// by StartImpostor write 'r' and wait for its standard input to close,
// then exit.
func HoldIfAsked() {
	if os.Getenv(envHold) == "" {
		return
	}
	os.Stdout.Write([]byte{'r'})
	io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// RequireLookalike fails t unless process pid runs with effective uid and
// gid and executes the file at path: an impostor that could pass for the
// process it replaced by everything but the pin.
func RequireLookalike(t testing.TB, pid int, uid, gid uint32, path string) {
	t.Helper()
	var proc, exe, bin unix.Stat_t
	dir := "/proc/" + strconv.Itoa(pid)
	if err := unix.Stat(dir, &proc); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(dir+"/exe", &exe); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(path, &bin); err != nil {
		t.Fatal(err)
	}
	if proc.Uid != uid || proc.Gid != gid || exe.Dev != bin.Dev || exe.Ino != bin.Ino {
		t.Fatalf("pid %d runs as %d/%d, inode %d:%d; want %d/%d, inode %d:%d",
			pid, proc.Uid, proc.Gid, exe.Dev, exe.Ino, uid, gid, bin.Dev, bin.Ino)
	}
}
