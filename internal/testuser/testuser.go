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
