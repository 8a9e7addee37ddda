package main

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	want := readBuildVersion()
	for _, args := range [][]string{{"version"}, {"--version"}} {
		r := runCLI(t, "", args...)
		if r.code != exitOK || r.stdout != want.String()+"\n" || !strings.HasPrefix(r.stdout, "writ ") || !strings.Contains(r.stdout, "(commit ") {
			t.Errorf("writ %v: %+v, want %q", args, r, want.String())
		}
	}
	r := runCLI(t, "", "version", "--output", "json")
	var got buildVersion
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || r.code != exitOK {
		t.Fatalf("json: %+v: %v", r, err)
	}
	if got != want || got.Version == "" || got.Commit == "" {
		t.Errorf("json %+v, want %+v with a version and a commit (or its placeholders)", got, want)
	}
	if r := runCLI(t, "", "version", "--output", "yaml"); r.code != exitUsage {
		t.Errorf("unknown output: %+v", r)
	}
}
