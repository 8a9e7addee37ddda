package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestEntryImportMemoryBounded: `entry create --file` reads the file one
// entry at a time and sends it in batches, so the process's peak memory
// does not grow with the file. The writ binary as shipped (built here
// without the race detector, whose shadow memory would be measured
// instead) imports 10,000 and then 100,000 entries; the peak RSS of the
// larger import must stay within a fixed bound, and within a few MiB of
// the smaller one's, where holding the file and its decoded entries
// would take several times the file's 19 MiB.
func TestEntryImportMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("builds writ and imports 110,000 entries")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "writ")
	build := exec.Command("go", "build", "-o", bin, "writ.dev/writ/cmd/writ")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	f := startFake(t)
	f.mu.Lock()
	f.forget = true
	f.mu.Unlock()

	small, smallSize := importPeak(t, f, bin, dir, 10_000)
	large, largeSize := importPeak(t, f, bin, dir, 100_000)
	t.Logf("peak RSS %d MiB importing %d MiB of JSON, %d MiB importing %d MiB", small>>20, smallSize>>20, large>>20, largeSize>>20)
	const limit, growth = 64 << 20, 16 << 20
	if large > limit {
		t.Errorf("peak RSS %d MiB importing a %d MiB file, want at most %d MiB", large>>20, largeSize>>20, limit>>20)
	}
	if large-small > growth {
		t.Errorf("peak RSS grew by %d MiB from a %d MiB file to a %d MiB one, want at most %d MiB",
			(large-small)>>20, smallSize>>20, largeSize>>20, growth>>20)
	}
}

// importPeak writes a file of n entries, imports it with bin against the
// fake, and returns the process's peak RSS and the file's size in bytes.
func importPeak(t *testing.T, f *fakeAdmin, bin, dir string, n int) (peak, size int64) {
	t.Helper()
	path := filepath.Join(dir, fmt.Sprintf("entries-%d.json", n))
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
		fmt.Fprintf(w, `{"spiffe_id": "spiffe://example.org/ns/prod/sa/workload-%d-%d", "parent_id": "spiffe://example.org/writ/agent/node%d", "selectors": ["unix:uid:%d", "unix:gid:100"], "dns_names": ["w%d.example.org"]}%s`, n, i, i%100, 10000+i, i, sep)
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
	cmd := exec.Command(bin, f.args("entry", "create", "--file", path)...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The peak is read from /proc while the process runs: the rusage of
	// a child started by os/exec would report the test process's own
	// peak, as the child shares its memory until exec. VmHWM never
	// falls, so the last reading misses only the final few milliseconds.
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if kib := vmHWM(cmd.Process.Pid); kib > 0 {
			peak = max(peak, kib<<10)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("writ: %v\n%s%s", err, stdout.String(), stderr.String())
			}
			if want := fmt.Sprintf("created %d of %d entries\n", n, n); stdout.String() != want {
				t.Fatalf("stdout %q, want %q", stdout.String(), want)
			}
			if peak == 0 {
				t.Fatal("no reading of the process's peak memory")
			}
			return peak, info.Size()
		case <-tick.C:
		}
	}
}

// vmHWM returns the peak resident memory of process pid in KiB, from
// /proc, or 0 once it has exited.
func vmHWM(pid int) int64 {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kib, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kib
		}
	}
	return 0
}
