package main

import (
	"strings"
	"testing"
)

// TestReservedIDsRefused: the CLI refuses, before any call, an entry
// whose SPIFFE ID is under /writ/ (where agents and the server live) and a
// join token for an agent outside /writ/agent/.
func TestReservedIDsRefused(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"entry with an agent's ID", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/writ/agent/b",
			"--parent-id", "spiffe://example.org/writ/agent/a", "--selector", "unix:uid:1"}, "reserved"},
		{"entry with the server's ID", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/writ/server",
			"--parent-id", "spiffe://example.org/writ/agent/a", "--selector", "unix:uid:1"}, "reserved"},
		{"update to an agent's ID", []string{"entry", "update", "--id", "00000000-0000-4000-8000-000000000001",
			"--spiffe-id", "spiffe://example.org/writ/agent/b"}, "reserved"},
		{"token for a workload path", []string{"token", "generate", "--spiffe-id", "spiffe://example.org/host/node1"}, "not an agent ID"},
		{"token for the server", []string{"token", "generate", "--spiffe-id", "spiffe://example.org/writ/server"}, "not an agent ID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t)
			r := runCLI(t, "", f.args(tt.args...)...)
			if r.code == 0 || !strings.Contains(r.stderr, tt.want) {
				t.Fatalf("code %d, stderr %q; want a refusal saying %q", r.code, r.stderr, tt.want)
			}
			if calls := f.callNames(); len(calls) != 0 {
				t.Errorf("the CLI called %v", calls)
			}
		})
	}
}
