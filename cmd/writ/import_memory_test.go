package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestEntryImportMemoryBounded: `entry create --file` reads the file one
// entry at a time and sends it in batches, so the process's peak memory
// does not grow with the file. A writ process imports 100,000 entries
// (about 13 MB of JSON) and its peak RSS must stay far below what holding
// the file and its entries would take.
func TestEntryImportMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("imports 100,000 entries")
	}
	const n = 100_000
	path := filepath.Join(t.TempDir(), "big.json")
	file, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(file)
	w.WriteString("[\n")
	for i := range n {
		sep := ",\n"
		if i == n-1 {
			sep = "\n"
		}
		fmt.Fprintf(w, `{"spiffe_id": "spiffe://example.org/ns/prod/sa/workload-%d", "parent_id": "spiffe://example.org/writ/agent/node%d", "selectors": ["unix:uid:%d", "unix:gid:100"], "dns_names": ["w%d.example.org"]}%s`, i, i%100, 10000+i, i, sep)
	}
	w.WriteString("]\n")
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := file.Close(); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}

	f := startFake(t)
	f.mu.Lock()
	f.forget = true
	f.mu.Unlock()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, f.args("entry", "create", "--file", path)...)
	cmd.Env = append(os.Environ(), envRunCLI+"=1")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("writ: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	if want := fmt.Sprintf("created %d of %d entries\n", n, n); stdout.String() != want {
		t.Fatalf("stdout %q, want %q", stdout.String(), want)
	}
	peak := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss << 10 // KiB on Linux
	// Holding the file alone takes its size; its entries decoded, several
	// times that. Streaming stays at a fixed few tens of MiB.
	limit := int64(64 << 20)
	if raceEnabled {
		limit = 160 << 20
	}
	t.Logf("imported %d entries (%d MiB of JSON); peak RSS %d MiB (limit %d MiB)", n, info.Size()>>20, peak>>20, limit>>20)
	if peak > limit {
		t.Errorf("peak RSS %d MiB importing a %d MiB file, want at most %d MiB", peak>>20, info.Size()>>20, limit>>20)
	}
}
