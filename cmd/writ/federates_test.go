package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// TestEntryFederatesWith: --federates-with is repeatable, normalized
// (sorted, duplicates dropped) before it is sent, shown in text and JSON,
// read from import files, replaced or cleared by update, and refused when
// malformed or combined with --clear-federates-with.
func TestEntryFederatesWith(t *testing.T) {
	f := startFake(t)
	r := runCLI(t, "", f.args("entry", "create",
		"--spiffe-id", "spiffe://example.org/web",
		"--parent-id", "spiffe://example.org/writ/agent/node1",
		"--selector", "unix:uid:1000",
		"--federates-with", "c.test", "--federates-with", "b.test", "--federates-with", "c.test")...)
	if r.code != 0 {
		t.Fatalf("create: code %d, stderr %q", r.code, r.stderr)
	}
	id := strings.TrimSpace(r.stdout)
	f.mu.Lock()
	got := f.entries[0].GetFederatesWith()
	f.mu.Unlock()
	if want := []string{"b.test", "c.test"}; !slices.Equal(got, want) {
		t.Fatalf("server got federates_with %q, want %q", got, want)
	}

	r = runCLI(t, "", f.args("entry", "show", "--id", id)...)
	if r.code != 0 || !strings.Contains(r.stdout, "Federates with   : b.test\nFederates with   : c.test\n") {
		t.Fatalf("show: code %d, stdout %q", r.code, r.stdout)
	}
	r = runCLI(t, "", f.args("entry", "show", "--id", id, "--output", "json")...)
	var je jsonEntry
	if err := json.Unmarshal([]byte(r.stdout), &je); err != nil || !slices.Equal(je.FederatesWith, []string{"b.test", "c.test"}) {
		t.Fatalf("show json: %v %q", err, r.stdout)
	}

	r = runCLI(t, "", f.args("entry", "update", "--id", id, "--federates-with", "d.test")...)
	if r.code != 0 || !slices.Equal(f.lastUpdate.GetUpdateMask(), []string{"federates_with"}) || !slices.Equal(f.lastUpdate.GetEntry().GetFederatesWith(), []string{"d.test"}) {
		t.Fatalf("update: code %d stderr %q, request %v", r.code, r.stderr, f.lastUpdate)
	}
	r = runCLI(t, "", f.args("entry", "update", "--id", id, "--clear-federates-with")...)
	if r.code != 0 || len(f.lastUpdate.GetEntry().GetFederatesWith()) != 0 || !slices.Equal(f.lastUpdate.GetUpdateMask(), []string{"federates_with"}) {
		t.Fatalf("clear: code %d stderr %q, request %v", r.code, r.stderr, f.lastUpdate)
	}
	for _, bad := range [][]string{
		{"entry", "update", "--id", id, "--federates-with", "B.test"},
		{"entry", "update", "--id", id, "--federates-with", "spiffe://b.test"},
		{"entry", "update", "--id", id, "--federates-with", "b.test", "--clear-federates-with"},
	} {
		if r := runCLI(t, "", f.args(bad...)...); r.code == 0 {
			t.Errorf("%q accepted", bad)
		}
	}

	file := writeFile(t, "e.json", `[{"spiffe_id": "spiffe://example.org/imported", "parent_id": "spiffe://example.org/writ/agent/node1",
		"selectors": ["unix:uid:7"], "federates_with": ["e.test", "b.test"]}]`)
	r = runCLI(t, "", f.args("entry", "create", "--file", file)...)
	if r.code != 0 {
		t.Fatalf("import: code %d stderr %q", r.code, r.stderr)
	}
	f.mu.Lock()
	got = f.entries[len(f.entries)-1].GetFederatesWith()
	f.mu.Unlock()
	if want := []string{"b.test", "e.test"}; !slices.Equal(got, want) {
		t.Fatalf("imported federates_with %q, want %q", got, want)
	}
}
