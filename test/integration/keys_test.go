package integration_test

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestIntegrationMemoryKeyManager: with --key-manager memory no key file
// is written; a restart makes a new CA, and the old CA stays in the
// bundle (until it expires) so that what it signed keeps verifying.
func TestIntegrationMemoryKeyManager(t *testing.T) {
	dir := filepath.Join(shortTempDir(t), "server")
	s := startServer(t, dir, "--key-manager", "memory")
	first := s.admin("bundle", "show")
	if n := strings.Count(first, "BEGIN CERTIFICATE"); n != 1 {
		t.Fatalf("bundle holds %d certificates, want 1", n)
	}
	s.stop()
	if keys, _ := filepath.Glob(filepath.Join(dir, "keys", "*")); len(keys) != 0 {
		t.Fatalf("memory key manager left key files: %v", keys)
	}

	s = startServer(t, dir, "--key-manager", "memory")
	second := s.admin("bundle", "show")
	if n := strings.Count(second, "BEGIN CERTIFICATE"); n != 2 || !strings.Contains(second, strings.TrimSpace(first)) {
		t.Fatalf("after a restart the bundle holds %d certificates (want the old CA and the new):\n%s", n, second)
	}
	if !strings.Contains(s.log.String(), "CA key lost with an earlier process") {
		t.Fatal("the server did not log that its earlier keys were lost")
	}
	s.stop()

	// The disk key manager does not pretend the lost keys are there.
	_, errOut, code := runWrit(t, nil, "server", "run", "--trust-domain", "example.org", "--data-dir", dir, "--bind-address", "127.0.0.1:0")
	if code == 0 || !strings.Contains(errOut, "not in its key store") {
		t.Fatalf("disk key manager over lost keys: exit %d\n%s", code, errOut)
	}
}
