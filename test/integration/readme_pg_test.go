package integration_test

import (
	"context"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestIntegrationReadmePostgres runs the README's block "Several servers
// on one PostgreSQL" with bash, as written, except for what isolates it:
// ports of its own, its temporary directory under the test's, and ./writ
// the binary built for the tests. As root it runs as the postgres user
// (PostgreSQL refuses to run as root).
func TestIntegrationReadmePostgres(t *testing.T) {
	if bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb"); len(bins) == 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("no PostgreSQL server binaries in /usr/lib/postgresql")
		}
		t.Skip("no PostgreSQL server binaries in /usr/lib/postgresql")
	}
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(data), "### Several servers on one PostgreSQL\n")
	if !ok {
		t.Fatal("README.md has no section \"Several servers on one PostgreSQL\"")
	}
	_, block, ok := strings.Cut(section, "```sh\n")
	block, _, ok2 := strings.Cut(block, "```\n")
	if !ok || !ok2 {
		t.Fatal("the section has no sh block")
	}

	dir := shortTempDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	script := block
	for _, r := range [][2]string{
		{"127.0.0.1:8081", freePort(t)},
		{"127.0.0.1:8082", freePort(t)},
		{"/tmp/writ-pg.XXXXXX", filepath.Join(dir, "pg.XXXXXX")},
	} {
		if !strings.Contains(script, r[0]) {
			t.Fatalf("the README block no longer holds %q", r[0])
		}
		script = strings.ReplaceAll(script, r[0], r[1])
	}
	bin, err := os.ReadFile(writBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "writ"), bin, 0o755); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-e", "-c", script)
	cmd.Dir = dir
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Skipf("running as root without a postgres user to run PostgreSQL as: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		cmd.Env = append(cmd.Env, "HOME="+dir, "USER=postgres")
	}
	cmd.WaitDelay = 5 * time.Second
	t.Cleanup(func() {
		// Whatever the block left running: its processes, and the
		// PostgreSQL server, which pg_ctl detaches.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		pids, _ := filepath.Glob(filepath.Join(dir, "pg.*", "data", "postmaster.pid"))
		for _, f := range pids {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			if pid, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0]); err == nil && pid > 0 {
				_ = syscall.Kill(pid, syscall.SIGQUIT)
			}
		}
	})
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the README block failed: %v\n%s", err, out)
	}
	text := string(out)
	if n := strings.Count(text, "spiffe://example.org/me"); n != 2 {
		t.Errorf("the block fetched the SVID %d times, want 2 (before and after server A stops):\n%s", n, text)
	}
	if !strings.Contains(text, `msg="connected to the server"`) || strings.Count(text, "127.0.0.1:") < 2 {
		t.Errorf("the output shows no agent connection or no two servers:\n%s", text)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "pg.*")); len(left) != 0 {
		t.Errorf("the block's clean-up left %v", left)
	}
}
