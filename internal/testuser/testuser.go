// Package testuser gives tests an unprivileged second user, writ-test, to
// run processes as another uid (the admin API's and the Workload API's
// peer-credential checks). Tests of several packages run at once and may
// create the user concurrently; CI creates it beforehand in .ci/run.
package testuser

import (
	"errors"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Name is the test user's login name.
const Name = "writ-test"

// RequireRoot skips the test unless it runs as root; in CI, which runs as
// root, it fails instead.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("this test needs root (to run a process as another uid), and CI runs as root")
	}
	t.Skip("needs root to run a process as another uid")
}

// Lookup returns the uid and gid of the test user, creating it if needed.
func Lookup(t testing.TB) (uid, gid uint32) {
	t.Helper()
	RequireRoot(t)
	u, err := user.Lookup(Name)
	if err != nil {
		if out, err := useradd(); err != nil && !strings.Contains(string(out), "already exists") {
			t.Fatalf("useradd %s: %v: %s", Name, err, out)
		}
		if u, err = user.Lookup(Name); err != nil {
			t.Fatal(err)
		}
	}
	id, err1 := strconv.ParseUint(u.Uid, 10, 32)
	g, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	return uint32(id), uint32(g)
}

// useradd creates the user, retrying while another test process holds
// the passwd lock.
func useradd() ([]byte, error) {
	for i := 0; ; i++ {
		out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", Name).CombinedOutput()
		if err == nil || i == 20 || !strings.Contains(string(out), "lock") {
			return out, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Group returns the gid of the group called name, creating it (a system
// group) if needed.
func Group(t testing.TB, name string) uint32 {
	t.Helper()
	RequireRoot(t)
	g, err := user.LookupGroup(name)
	if err != nil {
		if out, err := retryLocked("groupadd", "--system", name); err != nil && !strings.Contains(string(out), "already exists") {
			t.Fatalf("groupadd %s: %v: %s", name, err, out)
		}
		if g, err = user.LookupGroup(name); err != nil {
			t.Fatal(err)
		}
	}
	gid, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(gid)
}

// User returns the uid and primary gid of the system user called name,
// creating it if needed: in group (created if needed) when group is not
// empty, else in a group of its own. A name useradd refuses (such as
// one with characters outside its default rule) is retried with
// --badname; ok is false if it is still refused.
func User(t testing.TB, name, group string) (uid, gid uint32, ok bool) {
	t.Helper()
	RequireRoot(t)
	u, err := user.Lookup(name)
	if err != nil {
		args := []string{"--system", "--no-create-home", "--shell", "/usr/sbin/nologin"}
		if group != "" {
			args = append(args, "--gid", strconv.FormatUint(uint64(Group(t, group)), 10))
		} else {
			args = append(args, "--user-group")
		}
		out, err := retryLocked("useradd", append(args, name)...)
		if err != nil && !strings.Contains(string(out), "already exists") {
			out, err = retryLocked("useradd", append(append(args, "--badname"), name)...)
		}
		if err != nil && !strings.Contains(string(out), "already exists") {
			t.Logf("useradd %s: %v: %s", name, err, out)
			return 0, 0, false
		}
		if u, err = user.Lookup(name); err != nil {
			t.Fatal(err)
		}
	}
	id, err1 := strconv.ParseUint(u.Uid, 10, 32)
	g, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	return uint32(id), uint32(g), true
}

// retryLocked runs a shadow-utils command, retrying while another test
// process holds the passwd or group lock.
func retryLocked(name string, args ...string) ([]byte, error) {
	for i := 0; ; i++ {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err == nil || i == 20 || !strings.Contains(string(out), "lock") {
			return out, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}
