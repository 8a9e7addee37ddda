package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRemoteAdminFlags checks the remote admin flags of admin commands:
// malformed combinations are usage errors, and an unreachable Workload
// API is named before any server is dialled.
func TestRemoteAdminFlags(t *testing.T) {
	dir, err := os.MkdirTemp("", "w")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	missing := filepath.Join(dir, "api.sock")
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStderr string // contained
	}{
		{"socket and address", []string{"entry", "list", "--admin-address", "127.0.0.1:1", "--admin-socket", "/tmp/a.sock"}, exitUsage, "give --admin-socket or --admin-address"},
		{"address without port", []string{"entry", "list", "--admin-address", "localhost"}, exitUsage, `--admin-address "localhost": want HOST:PORT`},
		{"empty address", []string{"entry", "list", "--admin-address", ""}, exitUsage, "--admin-address is empty"},
		{"socket path without address", []string{"entry", "list", "--socket-path", missing}, exitUsage, "--socket-path is for --admin-address"},
		{"server ID without address", []string{"agent", "list", "--admin-server-id", "spiffe://example.org/writ/server"}, exitUsage, "--admin-server-id is for --admin-address"},
		{"SVID ID without address", []string{"entry", "list", "--admin-spiffe-id", "spiffe://example.org/ops"}, exitUsage, "--admin-spiffe-id is for --admin-address"},
		{"bad SVID ID", []string{"entry", "list", "--admin-address", "127.0.0.1:1", "--socket-path", missing, "--admin-spiffe-id", "spiffe://example.org/ops/"}, exitUsage, "--admin-spiffe-id"},
		{"bad server ID", []string{"entry", "list", "--admin-address", "127.0.0.1:1", "--socket-path", missing, "--admin-server-id", "spiffe://Example.org/x"}, exitUsage, "--admin-server-id"},
		{"server admin ID in another trust domain", []string{"server", "run", "--trust-domain", "example.org", "--data-dir", dir, "--admin-bind-address", "127.0.0.1:0", "--admin-id", "spiffe://other.test/ops"}, exitUsage, `--admin-id: invalid: SPIFFE ID "spiffe://other.test/ops" is not in trust domain "example.org"`},
		{"server admin ID not canonical", []string{"server", "run", "--trust-domain", "example.org", "--data-dir", dir, "--admin-bind-address", "127.0.0.1:0", "--admin-id", "spiffe://example.org/ops/"}, exitUsage, "--admin-id: invalid"},
		{"server admin ID without bind address", []string{"server", "run", "--trust-domain", "example.org", "--data-dir", dir, "--admin-id", "spiffe://example.org/ops"}, exitUsage, "--admin-id needs --admin-bind-address"},
		{"server admin ID is the server's", []string{"server", "run", "--trust-domain", "example.org", "--data-dir", dir, "--admin-bind-address", "127.0.0.1:0", "--admin-id", "spiffe://example.org/writ/server"}, exitUsage, "servers' own ID"},
		{"no Workload API", []string{"entry", "list", "--admin-address", "127.0.0.1:1", "--socket-path", missing, "--timeout", "2s"}, exitError,
			"writ: --admin-address needs this process's X.509-SVID: cannot connect to the Workload API socket " + missing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, "", tt.args...)
			if r.code != tt.wantCode || !strings.Contains(r.stderr, tt.wantStderr) {
				t.Fatalf("exit %d, stderr %q; want exit %d and %q", r.code, r.stderr, tt.wantCode, tt.wantStderr)
			}
		})
	}
}
