package server_test

import (
	"os"
	"path/filepath"
	"testing"

	"writ.dev/writ/ca/server"
)

func TestServerIDStable(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	id, err := server.LoadOrCreateServerID(dir)
	if err != nil {
		t.Fatal(err)
	}
	again, err := server.LoadOrCreateServerID(dir)
	if err != nil || again != id {
		t.Fatalf("second load = %q, %v; want %q", again, err, id)
	}
	other := t.TempDir()
	if err := os.Chmod(other, 0o700); err != nil {
		t.Fatal(err)
	}
	if id2, _ := server.LoadOrCreateServerID(other); id2 == id {
		t.Fatalf("two data dirs share server ID %s", id)
	}
	if err := os.WriteFile(filepath.Join(dir, server.ServerIDFile), []byte("../x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := server.LoadOrCreateServerID(dir); err == nil {
		t.Fatal("a corrupt server ID file was accepted")
	}
}
