package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"writ.dev/writ/internal/pgtest"
)

// TestSmoke runs `writ-bench --smoke` end to end: it builds writ, starts
// real servers and agents, and requires every figure: a missing one,
// whatever the reason, is a failure.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("the smoke run takes about a minute")
	}
	if runtime.GOOS != "linux" {
		t.Skip("the benchmark reads /proc and attests by Linux peer credentials")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatal("the go tool is needed to build writ")
	}
	if err := pgtest.Available(); err != nil && os.Getenv("CI") != "true" {
		t.Skipf("the PostgreSQL figures need a PostgreSQL server: %v", err)
	}
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := run(ctx, Options{Out: out, Smoke: true}, &testWriter{t: t})
	if err != nil && res != nil {
		for _, f := range res.missing() {
			t.Errorf("figure %s missing: %s", f.Name, f.Error)
		}
	}
	if err != nil {
		t.Fatal(err)
	}

	data, err := os.ReadFile(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var got Results
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if got.Mode != "smoke" || got.Machine.Cores == 0 || got.Machine.Go == "" {
		t.Errorf("results.json: mode %q, machine %+v", got.Mode, got.Machine)
	}
	want := catalogue(smokeConfig())
	if len(got.Figures) != len(want) {
		t.Errorf("results.json has %d figures, want %d", len(got.Figures), len(want))
	}
	for _, f := range got.Figures {
		if f.Value == nil {
			t.Errorf("figure %s missing: %s", f.Name, f.Error)
		}
	}
	report, err := os.ReadFile(filepath.Join(out, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range chartFiles {
		svg, err := os.ReadFile(filepath.Join(out, c))
		if err != nil {
			t.Error(err)
			continue
		}
		checkXML(t, c, string(svg))
		if !bytes.Contains(report, []byte("]("+c+")")) {
			t.Errorf("report.md does not show %s", c)
		}
	}
}

// testWriter sends the benchmark's progress to the test log.
type testWriter struct {
	mu sync.Mutex // guards t's logging from the benchmark's goroutines
	t  *testing.T
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestRunMainUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
	}{
		{name: "help", args: []string{"-h"}, code: 0},
		{name: "unknown flag", args: []string{"--bogus"}, code: 2},
		{name: "argument", args: []string{"extra"}, code: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if code := runMain(context.Background(), tt.args, &stderr); code != tt.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tt.code, stderr.String())
			}
			if !strings.Contains(stderr.String(), "usage") && tt.name != "argument" {
				t.Errorf("no usage on stderr:\n%s", stderr.String())
			}
		})
	}
}

func TestLogWatch(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := newLogWatch(f)
	log := `{"time":"t","level":"INFO","msg":"server ready","bind_address":"127.0.0.1:4321"}
not json
{"level":"DEBUG","msg":"X.509-SVIDs signed","requested":500,"signed":500}
{"level":"DEBUG","msg":"X.509-SVIDs signed","requested":3,"signed":2}
{"level":"DEBUG","msg":"entries synced","signed":1000}
`
	// Written in pieces that split lines.
	for len(log) > 0 {
		n := min(17, len(log))
		if _, err := w.Write([]byte(log[:n])); err != nil {
			t.Fatal(err)
		}
		log = log[n:]
	}
	if got := w.bindAddress(); got != "127.0.0.1:4321" {
		t.Errorf("bind address %q", got)
	}
	if n, records := w.signedCount(); n != 502 || records != 2 {
		t.Errorf("signed %d in %d records, want 502 in 2", n, records)
	}
	if !strings.Contains(w.tail.String(), "not json") {
		t.Errorf("tail lacks a line: %q", w.tail.String())
	}
}

func TestTailBuffer(t *testing.T) {
	b := newTailBuffer(2)
	b.Write([]byte("one\ntwo\nthr"))
	b.Write([]byte("ee\nfour"))
	if got, want := b.String(), "two\nthree\nfour"; got != want {
		t.Errorf("tail %q, want %q", got, want)
	}
}

func TestProcReaders(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	m, err := readMem(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if m.RSS <= 0 || m.Anon <= 0 || m.Anon > m.RSS {
		t.Errorf("memory of this process: %+v", m)
	}
	if _, err := cpuTicks(os.Getpid()); err != nil {
		t.Error(err)
	}
	if _, err := readMem(-1); err == nil {
		t.Error("readMem of no process: no error")
	}
	d := describeMachine(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	if d.Cores < 1 || d.Date != "2026-01-02T03:04:05Z" || d.Kernel == "" {
		t.Errorf("machine %+v", d)
	}
}
