package integration_test

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// procStatus returns fields of /proc/<pid>/status in KiB (VmRSS, RssAnon).
func procStatus(tb testing.TB, pid int, field string) float64 {
	tb.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseFloat(strings.Fields(v)[0], 64)
			if err != nil {
				tb.Fatal(err)
			}
			return kb
		}
	}
	tb.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// BenchmarkServer10k registers 10,000 entries in a real server and
// reports the import rate (CLI and server together), the time to list
// them all through the CLI, and the server's memory.
//
//	go test -run '^$' -bench Server10k -benchtime 10x ./test/integration/
func BenchmarkServer10k(b *testing.B) {
	dir := shortTempDir(b)
	p := startServer(b, filepath.Join(dir, "data"), "--log-level", "warn")
	idleRSS := procStatus(b, p.cmd.Process.Pid, "VmRSS")
	file := filepath.Join(dir, "entries.json")
	const n = 10000
	writeEntriesTB(b, file, n)
	start := time.Now()
	p.admin("entry", "create", "--file", file)
	importRate := n / time.Since(start).Seconds()

	b.ResetTimer()
	for range b.N {
		out := p.admin("entry", "list", "--output", "json")
		if len(out) < n*100 {
			b.Fatalf("short list output: %d bytes", len(out))
		}
	}
	b.StopTimer()
	b.ReportMetric(importRate, "import-entries/s")
	b.ReportMetric(idleRSS/1024, "idle-RSS-MiB")
	b.ReportMetric(procStatus(b, p.cmd.Process.Pid, "VmRSS")/1024, "10k-RSS-MiB")
	b.ReportMetric(procStatus(b, p.cmd.Process.Pid, "RssAnon")/1024, "10k-anon-MiB")
}
