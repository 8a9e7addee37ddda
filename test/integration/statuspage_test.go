package integration_test

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// chromium returns the path of a Chromium to drive headless: it must be
// there in CI (.ci/run installs Debian's chromium package); elsewhere the
// test is skipped without it.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed: .ci/run installs it (apt-get install chromium)")
	}
	t.Skip("chromium is not installed (apt-get install chromium)")
	return ""
}

// browse loads url in headless Chromium and returns the DOM after load;
// with screenshot set it also writes a PNG of the page there.
func browse(t *testing.T, browser, url, screenshot string) string {
	t.Helper()
	args := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir(), "--window-size=1280,1000"}
	if screenshot != "" {
		args = append(args, "--screenshot="+screenshot)
	} else {
		args = append(args, "--dump-dom")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, browser, append(args, url)...)
	var stderr syncBuffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %s: %v\n%s", url, err, tail(stderr.String(), 20))
	}
	return string(out)
}

// TestIntegrationStatusPage loads the status page of a real server with an
// attested agent in a real headless Chromium: the page needs the token,
// shows the trust domain, CA keys, agent, entries and audit events, and
// its search narrows the entries. A screenshot is kept for CI.
func TestIntegrationStatusPage(t *testing.T) {
	browser := chromium(t)
	dir := shortTempDir(t)
	tokenFile := filepath.Join(dir, "ui-token")
	s := startServer(t, filepath.Join(dir, "server"), "--ui-address", "127.0.0.1:0", "--ui-token-file", tokenFile)
	e := &nodeEnv{t: t, dir: dir, server: s, addr: s.nodeAddress(), bundle: filepath.Join(dir, "bundle.pem")}
	if err := os.WriteFile(e.bundle, []byte(s.admin("bundle", "show")), 0o600); err != nil {
		t.Fatal(err)
	}
	startAgent(t, e.addr, filepath.Join(dir, "a"), e.bundle, e.token("spiffe://example.org/writ/agent/node-a"))
	e.entry("spiffe://example.org/billing", "spiffe://example.org/writ/agent/node-a")
	e.entry("spiffe://example.org/frontend", "spiffe://example.org/writ/agent/node-a")
	s.admin("ca", "x509", "prepare")

	fi, err := os.Stat(tokenFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", fi, err)
	}
	tok, _ := os.ReadFile(tokenFile)
	token := strings.TrimSpace(string(tok))
	base := "http://" + logField(t, s, "ui_address") + "/"

	// Without the token: 401 and nothing about the server.
	resp, err := http.Get(base)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no token: %d", resp.StatusCode)
	}
	if dom := browse(t, browser, base, ""); strings.Contains(dom, "example.org") {
		t.Fatal("the browser saw the page without the token")
	}

	dom := browse(t, browser, base+"?token="+token, "")
	for _, want := range []string{`id="trust-domain">example.org`, "spiffe://example.org/writ/agent/node-a", "join_token",
		"spiffe://example.org/billing", "spiffe://example.org/frontend", "prepared", "active", "BatchCreateEntry", "PrepareAuthority"} {
		if !strings.Contains(dom, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	dom = browse(t, browser, base+"?q=bill&token="+token, "")
	_, entries, _ := strings.Cut(dom, `id="entries"`)
	entries, _, _ = strings.Cut(entries, `id="audit"`)
	if !strings.Contains(entries, "spiffe://example.org/billing") || strings.Contains(entries, "spiffe://example.org/frontend") {
		t.Error("search for 'bill' did not narrow the entries to billing")
	}

	artifacts := filepath.Join(os.TempDir(), "writ-test-artifacts")
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(artifacts, "status-page.png")
	browse(t, browser, base+"?token="+token, shot)
	if fi, err := os.Stat(shot); err != nil || fi.Size() < 10_000 {
		t.Fatalf("screenshot %s: %v %v", shot, fi, err)
	}
	t.Logf("status page screenshot: %s", shot)
	if strings.Contains(s.log.String(), token) {
		t.Fatal("the server logged the status page token")
	}
}

// logField returns a field of the server's "server ready" log line.
func logField(t *testing.T, s *serverProc, key string) string {
	t.Helper()
	for _, line := range strings.Split(s.log.String(), "\n") {
		if !strings.Contains(line, `msg="server ready"`) {
			continue
		}
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, key+"="); ok {
				return v
			}
		}
	}
	t.Fatalf("server logged no %s", key)
	return ""
}
