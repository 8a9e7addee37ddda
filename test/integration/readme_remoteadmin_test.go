package integration_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestIntegrationReadmeRemoteAdmin runs the README's block "Remote
// administration with an admin SVID" with bash, as written, except for
// what isolates it: ports of its own, its temporary directory under the
// test's, and ./writ the binary built for the tests.
func TestIntegrationReadmeRemoteAdmin(t *testing.T) {
	blocks := readmeSection(t, "### Remote administration with an admin SVID")
	// The section's block is the first after its heading.
	if len(blocks) == 0 || !strings.Contains(blocks[0], "--admin-bind-address") {
		t.Fatal("README section has no sh block with --admin-bind-address")
	}
	dir := shortTempDir(t)
	script := blocks[0]
	for _, r := range [][2]string{
		{"127.0.0.1:8181", freePort(t)},
		{"127.0.0.1:8443", freePort(t)},
		{"/tmp/writ-ra.XXXXXX", filepath.Join(dir, "ra.XXXXXX")},
	} {
		if !strings.Contains(script, r[0]) {
			t.Fatalf("the README block no longer holds %q", r[0])
		}
		script = strings.ReplaceAll(script, r[0], r[1])
	}
	if err := os.Symlink(writBin, filepath.Join(dir, "writ")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Not -e: the block's last calls are refused on purpose.
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Dir = dir
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	t.Cleanup(func() {
		if cmd.Process != nil {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
	})
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("walkthrough: %v\n%s", err, out)
	}
	log := string(out)
	for _, want := range []string{
		"SPIFFE ID        : spiffe://example.org/ops/me",
		"Admin            : true",
		"caller_spiffe_id=spiffe://example.org/ops/me",
		"refused spiffe://example.org/ops/me: permission denied: /writ.admin.v1.ServerService/Backup is served on the server's local admin socket only",
		"deleted entry",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("walkthrough output lacks %q:\n%s", want, log)
		}
	}
	_, last, _ := strings.Cut(log, "deleted entry")
	if !strings.Contains(last, "refused spiffe://example.org/ops/me: permission denied") && !strings.Contains(last, "the agent refused this process") {
		t.Errorf("the call after the deletion was not refused:\n%s", last)
	}
	if entries, _ := filepath.Glob(filepath.Join(dir, "ra.*")); len(entries) != 0 {
		t.Errorf("the block's clean-up left %v", entries)
	}
}
