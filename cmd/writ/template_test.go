package main

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/entry"
)

// TestTemplateInputRefusedBeforeDialing: templates go through the shared
// template parser before any call.
func TestTemplateInputRefusedBeforeDialing(t *testing.T) {
	const (
		agent = "spiffe://example.org/writ/agent/node1"
		id    = "6f1c7a52-3c7e-4a51-9a53-0d2f1d0c9e11"
	)
	td := spiffeid.RequireTrustDomainFromString("example.org")
	create := func(sid string, extra ...string) []string {
		return append([]string{"entry", "create", "--spiffe-id", sid, "--parent-id", agent, "--selector", "unix:gid:1000"}, extra...)
	}
	usage := func(cmd string) string { return "Run 'writ " + cmd + " --help' for usage.\n" }
	_, idErr := entry.ParseID("spiffe://example.org/user/{{unix.user}}")
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStderr string
	}{
		{"no placeholder", create("spiffe://example.org/user/alice", "--template"), 1,
			errorOf(entry.ParseTemplate(td, "spiffe://example.org/user/alice"))},
		{"reserved", create("spiffe://example.org/writ/{{unix.user}}", "--template"), 1,
			errorOf(entry.ParseTemplate(td, "spiffe://example.org/writ/{{unix.user}}"))},
		{"partial segment", create("spiffe://example.org/user/u{{unix.uid}}", "--template"), 1,
			errorOf(entry.ParseTemplate(td, "spiffe://example.org/user/u{{unix.uid}}"))},
		{"no trust domain", create("user/{{unix.user}}", "--template"), 1,
			"writ: invalid: template \"user/{{unix.user}}\" does not start with spiffe://<trust domain>/\n"},
		{"placeholder without --template", create("spiffe://example.org/user/{{unix.user}}"), 1,
			"writ: " + idErr.Error() + " (a template needs --template)\n"},
		{"--template without --spiffe-id", []string{"entry", "update", "--id", id, "--template"}, 2,
			"writ: --template needs --spiffe-id with the template\n" + usage("entry update")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t)
			r := runCLI(t, "", f.args(tt.args...)...)
			if r.code != tt.wantCode || r.stderr != tt.wantStderr || r.stdout != "" {
				t.Errorf("got code %d, stdout %q, stderr\n%q\nwant code %d, stderr\n%q", r.code, r.stdout, r.stderr, tt.wantCode, tt.wantStderr)
			}
			if calls := f.callNames(); len(calls) != 0 {
				t.Errorf("server received %v; bad input must be refused before any call", calls)
			}
		})
	}
}
