package agent_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"writ.dev/writ/agent/internal/fakenode"
	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/clock"
)

// TestRSSWith10kEntries runs the real `writ agent run` binary against a
// fake server with 10,000 entries and reports the agent process's
// resident memory once every SVID is signed. It builds the binary, so it
// runs only when asked:
//
//	WRIT_RSS_TEST=1 go test -run TestRSSWith10kEntries -v ./agent
func TestRSSWith10kEntries(t *testing.T) {
	if os.Getenv("WRIT_RSS_TEST") == "" {
		t.Skip("set WRIT_RSS_TEST=1 to measure")
	}
	const n = 10000
	dir, err := os.MkdirTemp("", "wr")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "writ")
	if out, err := exec.Command("go", "build", "-o", bin, "writ.dev/writ/cmd/writ").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	srv := fakenode.Start(t, fakenode.Options{Clock: clock.Real()})
	entries := make([]*nodev1.Entry, n)
	for i := range entries {
		entries[i] = srv.Entry(fmt.Sprintf("/ns/team%d/svc%d", i%100, i), fmt.Sprintf("unix:uid:%d", 1000+i/10), fmt.Sprintf("unix:path:/opt/svc%d/bin/server", i))
	}
	srv.SetEntries(entries...)
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, srv.CAPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "agent", "run", "--trust-domain", "example.org", "--server-address", srv.Address(),
		"--data-dir", filepath.Join(dir, "d"), "--trust-bundle", ca, "--log-level", "warn")
	cmd.Env = append(os.Environ(), "WRIT_JOIN_TOKEN="+srv.AddJoinToken())
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	signed := func() int {
		total := 0
		for _, s := range srv.Stats().BatchSizes {
			total += s
		}
		return total
	}
	for signed() < n {
		if time.Since(start) > 2*time.Minute {
			t.Fatalf("only %d SVIDs signed", signed())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("%d SVIDs signed in %d batches, %v after start", n, len(srv.Stats().BatchSizes), time.Since(start).Round(time.Millisecond))
	var rss int
	for range 10 {
		time.Sleep(300 * time.Millisecond)
		rss = max(rss, procStatus(t, cmd.Process.Pid, "VmRSS"))
	}
	hwm := procStatus(t, cmd.Process.Pid, "VmHWM")
	t.Logf("agent RSS with %d entries: %.1f MiB (peak during initial signing %.1f MiB)", n, float64(rss)/1024, float64(hwm)/1024)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("agent exit after SIGTERM: %v", err)
	}
	if rss > 50*1024 {
		t.Errorf("RSS %.1f MiB is over the 50 MiB budget", float64(rss)/1024)
	}
}

// procStatus returns a /proc/<pid>/status field in kB.
func procStatus(t *testing.T, pid int, field string) int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), field+":"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				t.Fatal(err)
			}
			return kb
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
