package main

import (
	"encoding/json"
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the golden file (run go test -update after checking the change):\n%s", name, firstDiff(string(want), got))
	}
}

// firstDiff shows the first line that differs.
func firstDiff(want, got string) string {
	wl, gl := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := range max(len(wl), len(gl)) {
		var w, g string
		if i < len(wl) {
			w = wl[i]
		}
		if i < len(gl) {
			g = gl[i]
		}
		if w != g {
			return fmt.Sprintf("line %d:\n  want: %s\n  got:  %s", i+1, w, g)
		}
	}
	return ""
}

// fixtureSample is a deterministic, skewed latency-like sample.
func fixtureSample(n int, base, spread float64, seed int) Sample {
	s := make(Sample, n)
	for i := range s {
		u := float64((i*7919+seed*104729)%n) / float64(n)
		s[i] = base + spread*u*u*u
	}
	return s
}

// fixture is a run's results with every figure set but a few.
func fixture() (*Results, map[string]Sample, []memPoint) {
	cfg := fullConfig()
	r := &Results{
		Tool:            "writ-bench",
		Mode:            "full",
		Started:         time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC),
		DurationSeconds: 301.5,
		Machine: Machine{
			CPU: "Test CPU @ 2.0GHz", Cores: 2, MemoryMiB: 24105, Kernel: "6.1.0-test",
			OS: "linux/amd64", Go: "go1.26.8", Date: "2026-11-23T12:00:00Z", LoadAtStart: "0.12 0.30 0.25",
		},
		WritVersion:     "0123456789ab",
		ReferenceSource: ReferenceSource,
		Figures:         catalogue(cfg),
	}
	b := &bench{cfg: cfg, res: r, prog: &progress{w: io.Discard, start: time.Now()}}
	for i, f := range r.Figures {
		switch {
		case strings.HasPrefix(f.Name, "writ.fetch_x509svids.s101"):
			continue // left missing, with a reason
		case f.Name == figAgentPerStream:
			continue // left missing, no reason: "not measured"
		case strings.HasSuffix(f.Name, ".ratio_to_stub"), strings.HasSuffix(f.Name, ".ratio_to_relay"):
			continue // computed by finish
		}
		v := 0.05 + float64(i%17)*1.37 + float64(i)*0.011
		switch f.Unit {
		case unitOpsPerSec, unitCallsPerSec, unitEntriesPerSec, unitSVIDsPerSec:
			v = 1000 + float64(i)*523.7
		case unitMiB:
			v = 10 + float64(i%9)*7.3
		}
		params := map[string]int{}
		if strings.HasPrefix(f.Name, "memory.") || strings.HasPrefix(f.Name, "propagation.") {
			params["entries"] = 1000 * (i % 11)
		}
		if strings.HasPrefix(f.Name, "propagation.") {
			params["arrived_before_return"] = i % 3
		}
		if strings.HasPrefix(f.Name, "stub.") || strings.HasPrefix(f.Name, "writ.") {
			params["rounds"] = 4
		}
		b.set(f.Name, v, 100+i, params)
	}
	b.fail(errors.New("the agent's Workload API is not available: test reason"), "writ.fetch_x509svids.s101.")
	b.finish()

	dist := map[string]Sample{
		"writ." + scX509C1:   fixtureSample(5000, 0.1, 2, 1),
		"stub." + scX509C1:   fixtureSample(6000, 0.08, 1.5, 2),
		"writ." + scX509C16:  fixtureSample(20000, 0.5, 10, 3),
		"stub." + scX509C16:  fixtureSample(25000, 0.4, 8, 4),
		"stub." + scX509S101: fixtureSample(500, 2, 30, 5),
		"writ." + scJWTFirst: fixtureSample(1500, 0.6, 5, 6),
		"stub." + scJWT:      fixtureSample(6000, 0.07, 1, 7),
		"propagation." + propE0: append(fixtureSample(100, 0.5, 20, 8),
			0), // arrived before the call returned: a zero on a log axis
		"propagation." + propE10k: fixtureSample(100, 1, 60, 9),
	}
	mem := []memPoint{
		{Entries: 0, Server: memInfo{RSS: 19.1, Anon: 3.5}, Agent: memInfo{RSS: 19.2, Anon: 3.6}},
		{Entries: 1000, Server: memInfo{RSS: 25.2, Anon: 8.8}, Agent: memInfo{RSS: 30.3, Anon: 15}},
		{Entries: 10000, Server: memInfo{RSS: 45.3, Anon: 23.4}, Agent: memInfo{RSS: 44.7, Anon: 30.2}},
	}
	return r, dist, mem
}

func TestReportGolden(t *testing.T) {
	r, dist, mem := fixture()
	charts := buildCharts(r, dist, mem)
	var files []string
	for _, c := range charts {
		files = append(files, c.File)
		svg := c.SVG()
		checkXML(t, c.File, svg)
		golden(t, c.File, svg)
	}
	if strings.Join(files, " ") != strings.Join(chartFiles, " ") {
		t.Errorf("charts = %v, want %v", files, chartFiles)
	}
	report := renderReport(r, charts)
	golden(t, "report.md", report)
	for _, f := range files {
		if !strings.Contains(report, "]("+f+")") {
			t.Errorf("report does not show %s", f)
		}
	}
	// A missing figure is shown as such, with its reason, never a value.
	for _, s := range []string{"## Not available", "test reason", "`writ.fetch_x509svids.s101.p50`", "`memory.agent.per_stream`", "not measured"} {
		if !strings.Contains(report, s) {
			t.Errorf("report lacks %q", s)
		}
	}
}

// TestReportSmoke: a smoke report says so, and charts without data are
// left out rather than drawn empty.
func TestReportSmoke(t *testing.T) {
	r, _, _ := fixture()
	r.Mode = "smoke"
	charts := buildCharts(r, map[string]Sample{"writ." + scX509C1: {1, 2, 3}}, nil)
	var files []string
	for _, c := range charts {
		files = append(files, c.File)
	}
	if want := "latency-fetch-x509svid.svg throughput.svg"; strings.Join(files, " ") != want {
		t.Errorf("charts = %v, want %s", files, want)
	}
	report := renderReport(r, charts)
	if !strings.Contains(report, "**Smoke run**") {
		t.Error("smoke report does not say it is one")
	}
	if !strings.Contains(report, "*(No chart: its figures were not measured.)*") {
		t.Error("a chart without data is not reported as missing")
	}
}

// checkXML fails if s is not well-formed XML.
func checkXML(t *testing.T, name, s string) {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(s))
	for {
		_, err := d.Token()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatalf("%s is not well-formed: %v", name, err)
		}
	}
}

func TestResultsJSON(t *testing.T) {
	r, _, _ := fixture()
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		Machine map[string]any `json:"machine"`
		Figures []struct {
			Name        string   `json:"name"`
			Value       *float64 `json:"value"`
			Unit        string   `json:"unit"`
			Description string   `json:"description"`
			Error       string   `json:"error"`
		} `json:"figures"`
	}
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"cpu", "cores", "memory_mib", "kernel", "go", "date"} {
		if _, ok := back.Machine[k]; !ok {
			t.Errorf("machine lacks %q", k)
		}
	}
	if len(back.Figures) != len(r.Figures) {
		t.Fatalf("%d figures in JSON, want %d", len(back.Figures), len(r.Figures))
	}
	for _, f := range back.Figures {
		if f.Name == "" || f.Unit == "" || f.Description == "" {
			t.Errorf("figure %+v lacks a name, unit or description", f)
		}
		if (f.Value == nil) == (f.Error == "") {
			t.Errorf("figure %s: value %v, error %q: exactly one must be set", f.Name, f.Value, f.Error)
		}
	}
	if !strings.Contains(string(data), `"value":null`) {
		t.Error("a missing figure's value is not null")
	}
}

func TestCatalogue(t *testing.T) {
	for _, cfg := range []Config{fullConfig(), smokeConfig()} {
		seen := map[string]bool{}
		for _, f := range catalogue(cfg) {
			if seen[f.Name] {
				t.Errorf("figure %s listed twice", f.Name)
			}
			seen[f.Name] = true
			if f.Unit == "" || f.Description == "" {
				t.Errorf("figure %s lacks a unit or description", f.Name)
			}
			if f.Reference != nil && f.Reference.Of == "" {
				t.Errorf("figure %s: reference without its source", f.Name)
			}
		}
		// The reference values, each beside its figure.
		r := &Results{Figures: catalogue(cfg)}
		for name, want := range map[string]float64{
			"writ." + scX509C1 + ".p50":        0.5,
			"writ." + scX509C1 + ".rate":       1800,
			"writ." + scX509C16 + ".rate":      4600,
			"writ." + scJWTCached + ".p50":     0.45,
			"writ." + scJWTFirst + ".p50":      1.25,
			"writ." + scValidate + ".p50":      0.57,
			"propagation." + propE0 + ".p50":   4400,
			"propagation." + propE0 + ".max":   9500,
			"propagation." + propE10k + ".p50": 4400,
			"propagation." + propE10k + ".max": 9500,
			"memory.agent.rss." + memIdle:      60,
			"memory.agent.rss." + memE10k:      100,
			"memory.server.rss." + memIdle:     147,
			"memory.server.rss." + memE10k:     187,
			"stub." + scX509C1 + ".rate":       5800,
			"stub." + scX509C16 + ".rate":      17500,
		} {
			f := r.find(name)
			if f == nil {
				t.Errorf("no figure %s", name)
				continue
			}
			if f.Reference == nil || f.Reference.Value != want {
				t.Errorf("%s: reference %+v, want %v", name, f.Reference, want)
			}
		}
		// And its targets.
		for name, want := range map[string]*Target{
			"writ." + scX509C1 + ".ratio_to_stub":   targetStubRatio,
			"writ." + scX509C16 + ".ratio_to_stub":  targetStubRatio,
			"writ." + scJWTFirst + ".ratio_to_stub": nil,
			"propagation." + propE0 + ".p99":        targetPropagation,
			"propagation." + propE10k + ".p99":      targetPropagation,
		} {
			if f := r.find(name); f == nil || f.Target != want {
				t.Errorf("%s: target %+v, want %+v", name, f, want)
			}
		}
		if f := r.find("memory.agent.rss." + memE10k); f.Target == nil || *f.Target.Max != 50 {
			t.Errorf("agent memory target %+v, want at most 50 MiB", f.Target)
		}
	}
}

func TestTargets(t *testing.T) {
	tests := []struct {
		name string
		t    *Target
		v    float64
		want bool
	}{
		{name: "ratio above", t: targetStubRatio, v: 0.85, want: true},
		{name: "ratio at", t: targetStubRatio, v: 0.8, want: true},
		{name: "ratio below", t: targetStubRatio, v: 0.79, want: false},
		{name: "propagation below", t: targetPropagation, v: 99.9, want: true},
		{name: "propagation at is not below", t: targetPropagation, v: 100, want: false},
		{name: "half of SPIRE", t: halfOf(100), v: 49, want: true},
		{name: "more than half of SPIRE", t: halfOf(100), v: 50.1, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.t.met(tt.v); got != tt.want {
				t.Errorf("met(%v) = %v, want %v", tt.v, got, tt.want)
			}
		})
	}
}

func TestFormat(t *testing.T) {
	tests := []struct {
		name string
		got  string
		want string
	}{
		{name: "count", got: count(1234567), want: "1,234,567"},
		{name: "small count", got: count(999), want: "999"},
		{name: "rate", got: formatValue(17523.4, unitCallsPerSec), want: "17,523 calls/s"},
		{name: "small rate", got: formatValue(12.34, unitCallsPerSec), want: "12.3 calls/s"},
		{name: "sub-millisecond", got: formatValue(0.4567, unitMS), want: "0.457 ms"},
		{name: "milliseconds", got: formatValue(4.567, unitMS), want: "4.57 ms"},
		{name: "seconds in ms", got: formatValue(9500, unitMS), want: "9,500 ms"},
		{name: "MiB", got: formatValue(43.04, unitMiB), want: "43.0 MiB"},
		{name: "ratio", got: formatValue(0.7977, unitRatio), want: "0.798"},
		{name: "tick", got: tickLabel(0.05), want: "0.05"},
		{name: "big tick", got: tickLabel(10000), want: "10,000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %q, want %q", tt.got, tt.want)
			}
		})
	}
}
