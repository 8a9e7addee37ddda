package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestDevUserSegment(t *testing.T) {
	for _, tc := range []struct {
		name, login string
		want        string
	}{
		{"login name", "alice", "alice"},
		{"dots, dashes, underscores", "j.doe-2_x", "j.doe-2_x"},
		{"no login name", "", "uid-1000"},
		{"the agent's name", "agent", "uid-1000"},
		{"not a path segment", "DOMAIN\\alice", "uid-1000"},
		{"space", "a b", "uid-1000"},
		{"dot", ".", "uid-1000"},
		{"dot dot", "..", "uid-1000"},
		{"non-ASCII", "zoë", "uid-1000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := devUserSegment(tc.login, 1000); got != tc.want {
				t.Fatalf("devUserSegment(%q) = %q, want %q", tc.login, got, tc.want)
			}
		})
	}
}

func TestDevFlags(t *testing.T) {
	dir := shortTempDir(t)
	data := filepath.Join(dir, "data")
	// Every case names its own data dir and socket: the defaults may be a
	// running `writ dev`'s.
	sock := filepath.Join(dir, "api.sock")
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"bad trust domain", []string{"dev", "--socket-path", sock, "--data-dir", data, "--trust-domain", "Example.org"}, exitUsage, "not a valid trust domain"},
		{"socket in the data dir", []string{"dev", "--data-dir", data, "--socket-path", filepath.Join(data, "api.sock")}, exitUsage, "inside the data dir"},
		{"socket path too long", []string{"dev", "--data-dir", data, "--socket-path", "/" + strings.Repeat("s", 120)}, exitUsage, "longer than the 103"},
		{"data dir too deep", []string{"dev", "--data-dir", "/" + strings.Repeat("d", 100), "--socket-path", filepath.Join(dir, "s.sock")}, exitUsage, "too deep"},
		{"empty data dir", []string{"dev", "--socket-path", sock, "--data-dir", ""}, exitUsage, "--data-dir"},
		{"bad log level", []string{"dev", "--socket-path", sock, "--data-dir", data, "--log-level", "loud"}, exitUsage, "--log-level"},
		{"unexpected argument", []string{"dev", "--data-dir", data, "--socket-path", sock, "now"}, exitUsage, "unexpected argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, "", tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.stderr) {
				t.Fatalf("code %d, stderr %q; want %d and %q", r.code, r.stderr, tc.code, tc.stderr)
			}
		})
	}
}

// lockedBuffer is a bytes.Buffer written by one goroutine and read by
// another.
type lockedBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// devProc is `writ dev` running in this process.
type devProc struct {
	cancel         context.CancelFunc
	stdout, stderr *lockedBuffer
	code           chan int
}

func startDev(t *testing.T, args ...string) *devProc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &devProc{cancel: cancel, stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, code: make(chan int, 1)}
	go func() {
		p.code <- run(ctx, append([]string{"writ", "dev"}, args...), strings.NewReader(""), p.stdout, p.stderr)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-p.code:
		case <-time.After(30 * time.Second):
			t.Error("writ dev did not stop")
		}
	})
	return p
}

func (p *devProc) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(p.stdout.String(), "writ dev is ready") {
		select {
		case code := <-p.code:
			p.code <- code
			t.Fatalf("writ dev exited with %d before ready:\n%s%s", code, p.stdout, p.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("writ dev not ready within 60s:\n%s%s", p.stdout, p.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop cancels the run (Ctrl-C) and returns its exit code.
func (p *devProc) stop(t *testing.T) int {
	t.Helper()
	p.cancel()
	select {
	case code := <-p.code:
		p.code <- code
		return code
	case <-time.After(30 * time.Second):
		t.Fatal("writ dev did not stop within 30s")
		return -1
	}
}

// TestDevRunsAndResumes: writ dev gives this process an identity, refuses
// a second instance on its data dir, stops cleanly and resumes its state.
func TestDevRunsAndResumes(t *testing.T) {
	dir := shortTempDir(t)
	args := []string{"--data-dir", filepath.Join(dir, "data"), "--socket-path", filepath.Join(dir, "s", "api.sock"), "--log-level", "info"}
	p := startDev(t, args...)
	p.waitReady(t)
	out := p.stdout.String()
	for _, want := range []string{"Your identity:        spiffe://example.org/dev/", "export SPIFFE_ENDPOINT_SOCKET=unix://" + filepath.Join(dir, "s", "api.sock"), "export WRIT_ADMIN_SOCKET=" + filepath.Join(dir, "data", "server", "admin.sock")} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(p.stderr.String(), "agent attested") {
		t.Fatalf("first start: the agent did not attest:\n%s", p.stderr)
	}

	second := runCLI(t, "", append([]string{"dev"}, args...)...)
	if second.code != exitError || !strings.Contains(second.stderr, "locked by another writ process") {
		t.Fatalf("second instance: code %d, stderr %q", second.code, second.stderr)
	}
	otherDir := runCLI(t, "", "dev", "--data-dir", filepath.Join(dir, "data2"), "--socket-path", filepath.Join(dir, "s", "api.sock"))
	if otherDir.code != exitError || !strings.Contains(otherDir.stderr, "in use by another process") {
		t.Fatalf("second instance on the same socket: code %d, stderr %q", otherDir.code, otherDir.stderr)
	}

	if code := p.stop(t); code != exitOK {
		t.Fatalf("exit code %d after Ctrl-C:\n%s", code, p.stderr)
	}
	if !strings.Contains(p.stdout.String(), "writ dev stopped") {
		t.Fatalf("no stop message:\n%s", p.stdout)
	}

	p = startDev(t, args...)
	p.waitReady(t)
	if log := p.stderr.String(); strings.Contains(log, "agent attested") || strings.Contains(log, "registered the user's entry") {
		t.Fatalf("restart attested or registered again:\n%s", log)
	}
	if code := p.stop(t); code != exitOK {
		t.Fatalf("exit code %d after Ctrl-C:\n%s", code, p.stderr)
	}

	// The server's state lost, the agent's kept: a new CA would not be
	// trusted by the agent; writ dev says so instead of starting over.
	if err := os.RemoveAll(filepath.Join(dir, "data", "server")); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, "", append([]string{"dev"}, args...)...)
	if r.code != exitError || !strings.Contains(r.stderr, "not issued by this CA") || !strings.Contains(r.stderr, filepath.Join(dir, "data", "agent")) {
		t.Fatalf("agent of another CA: code %d, stderr %q", r.code, r.stderr)
	}
}
