package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestObserveFlags: a bad --metrics-address or --health-address is a
// usage error that names the flag, for the server and the agent.
func TestObserveFlags(t *testing.T) {
	dir := shortTempDir(t)
	server := []string{"server", "run", "--trust-domain", "example.org", "--data-dir", filepath.Join(dir, "s")}
	agent := []string{"agent", "run", "--trust-domain", "example.org", "--data-dir", filepath.Join(dir, "a"), "--socket-path", filepath.Join(dir, "api.sock")}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"server metrics", append(server, "--metrics-address", "nine"), "--metrics-address"},
		{"server health", append(server, "--health-address", "host:port:x"), "--health-address"},
		{"agent metrics", append(agent, "--metrics-address", "70000"), "--metrics-address"},
		{"agent health", append(agent, "--health-address", "x"), "--health-address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, "", tc.args...)
			if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("code %d, stderr %q; want usage error naming %s", r.code, r.stderr, tc.want)
			}
		})
	}
}
