package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// envUpdateDocs makes TestConfigReference rewrite docs/config.md instead of
// comparing it (make docs).
const envUpdateDocs = "WRIT_UPDATE_DOCS"

// TestConfigReference fails when docs/config.md does not match the command
// definitions: a flag added, renamed or given a new default must be
// documented in the same change.
func TestConfigReference(t *testing.T) {
	var got bytes.Buffer
	if err := writeConfigReference(&got, newApp(nil, &bytes.Buffer{}, &bytes.Buffer{})); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("..", "..", "docs", "config.md")
	if os.Getenv(envUpdateDocs) == "1" {
		if err := os.WriteFile(path, got.Bytes(), 0o644); err != nil { //nolint:gosec // a documentation file
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run make docs)", err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("docs/config.md is out of date with the command definitions: run make docs")
	}
}
