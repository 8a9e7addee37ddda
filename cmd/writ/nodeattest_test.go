package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"writ.dev/writ/internal/nodepki"
)

// TestNodeAttestFlags: node attestor flags are checked before anything
// runs, and each mistake is named.
func TestNodeAttestFlags(t *testing.T) {
	dir := shortTempDir(t)
	now := time.Now()
	ca := nodepki.NewCA(t, "org CA", now)
	certFile, keyFile := ca.Issue(t, nodepki.Node{CN: "web1"}, now).Write(t, dir, "web1")
	_, otherKey := ca.Issue(t, nodepki.Node{CN: "web2"}, now).Write(t, dir, "web2")
	bundle := filepath.Join(dir, "ca.pem")
	nodepki.WriteBundle(t, bundle, ca)
	garbage := filepath.Join(dir, "garbage")
	if err := os.WriteFile(garbage, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	agent := func(extra ...string) []string {
		return append([]string{"agent", "run", "--trust-domain", "example.org", "--data-dir", filepath.Join(dir, "data"), "--socket-path", filepath.Join(dir, "api.sock"), "--server-address", "127.0.0.1:1"}, extra...)
	}
	server := func(extra ...string) []string {
		return append([]string{"server", "run", "--trust-domain", "example.org", "--data-dir", filepath.Join(dir, "srv"), "--bind-address", "127.0.0.1:0"}, extra...)
	}
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"unknown attestor", agent("--node-attestor", "tpm"), exitUsage, `--node-attestor "tpm": use join_token, x509pop or sshpop`},
		{"x509pop without files", agent("--node-attestor", "x509pop"), exitUsage, "needs --x509pop-cert and --x509pop-key"},
		{"x509pop with a token", agent("--node-attestor", "x509pop", "--join-token", "secret-token-value"), exitUsage, "--join-token is for --node-attestor join_token"},
		{"x509pop key of another certificate", agent("--node-attestor", "x509pop", "--x509pop-cert", certFile, "--x509pop-key", otherKey), exitUsage, "private key does not match the certificate"},
		{"x509pop key not a key", agent("--node-attestor", "x509pop", "--x509pop-cert", certFile, "--x509pop-key", garbage), exitUsage, "no PEM private key"},
		{"x509pop flags without the attestor", agent("--x509pop-cert", certFile), exitUsage, "--x509pop-cert is for --node-attestor x509pop"},
		{"sshpop flags with x509pop", agent("--node-attestor", "x509pop", "--x509pop-cert", certFile, "--x509pop-key", keyFile, "--sshpop-host-key", garbage), exitUsage, "--sshpop-host-key is for --node-attestor sshpop"},
		{"sshpop without files", agent("--node-attestor", "sshpop"), exitUsage, "needs --sshpop-host-key and --sshpop-host-cert"},
		{"sshpop key not a key", agent("--node-attestor", "sshpop", "--sshpop-host-key", garbage, "--sshpop-host-cert", garbage), exitUsage, "--sshpop-host-key"},
		{"no identity names the attestors", agent(), exitError, "--node-attestor x509pop or sshpop"},
		{"server bundle missing", server("--x509pop-ca-bundle", filepath.Join(dir, "none.pem")), exitUsage, "--x509pop-ca-bundle"},
		{"server bundle not PEM", server("--x509pop-ca-bundle", garbage), exitUsage, "no PEM certificate"},
		{"server template without bundle", server("--x509pop-agent-path-template", "x/{{ .Fingerprint }}"), exitUsage, "needs --x509pop-ca-bundle"},
		{"server template does not parse", server("--x509pop-ca-bundle", bundle, "--x509pop-agent-path-template", "{{ .Fingerprint"), exitUsage, "--x509pop-agent-path-template"},
		{"server SSH CA not a key", server("--sshpop-cert-authority", garbage), exitUsage, "--sshpop-cert-authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, "", tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.stderr) {
				t.Fatalf("code %d, stderr %q; want %d and %q", r.code, r.stderr, tc.code, tc.stderr)
			}
			if strings.Contains(r.stderr, "secret-token-value") {
				t.Fatal("join token printed")
			}
		})
	}
}

// TestCABundleReloaded: the x509pop CA bundle is read again when the file
// changes, whether rewritten in place or replaced by a rename; a bad
// version keeps the last good one.
func TestCABundleReloaded(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	a, b := nodepki.NewCA(t, "A", now), nodepki.NewCA(t, "B", now)
	path := filepath.Join(dir, "ca.pem")
	nodepki.WriteBundle(t, path, a)
	var logs strings.Builder
	log, err := newLogger(&logs, "text", "info")
	if err != nil {
		t.Fatal(err)
	}
	r, err := newFileReloader(path, "--x509pop-ca-bundle", parseCABundle, log)
	if err != nil {
		t.Fatal(err)
	}
	subjects := func() string {
		var names []string
		for _, c := range r.get() {
			names = append(names, c.Subject.CommonName)
		}
		return strings.Join(names, ",")
	}
	if got := subjects(); got != "A" {
		t.Fatalf("first read: %s", got)
	}
	nodepki.WriteBundle(t, path, a, b) // in place
	if got := subjects(); got != "A,B" {
		t.Fatalf("after rewriting: %s", got)
	}
	tmp := filepath.Join(dir, "new.pem")
	nodepki.WriteBundle(t, tmp, b)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	if got := subjects(); got != "B" {
		t.Fatalf("after rename: %s", got)
	}
	if err := os.WriteFile(path, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := subjects(); got != "B" {
		t.Fatalf("a bad file replaced the good one: %s", got)
	}
	if !strings.Contains(logs.String(), "keeping the last good one") {
		t.Errorf("bad file not logged: %s", logs.String())
	}
}
