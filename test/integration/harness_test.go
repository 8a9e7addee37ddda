package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"writ.dev/writ/internal/pgtest"
)

var (
	buildFlags []string
	writBin    string
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "writbin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	writBin = filepath.Join(dir, "writ")
	args := append([]string{"build", "-o", writBin}, buildFlags...)
	cmd := exec.Command("go", append(args, "writ.dev/writ/cmd/writ")...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build writ:", err)
		return 1
	}
	return pgtest.Main(m)
}

// shortTempDir returns a temporary directory with a short path, for Unix
// sockets, removed when the test ends.
func shortTempDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "w")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// syncBuffer is a bytes.Buffer safe for a process to write while the test
// reads it.
type syncBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// serverProc is a running `writ server run`.
type serverProc struct {
	t       testing.TB
	cmd     *exec.Cmd
	log     *syncBuffer
	dataDir string
	socket  string
	done    chan struct{}
	err     error // set before done closes
}

// startServer starts a server on dataDir and waits until it serves.
func startServer(t testing.TB, dataDir string, extra ...string) *serverProc {
	t.Helper()
	p := launchServer(t, dataDir, extra...)
	p.waitReady()
	return p
}

// waitReady waits until the server answers its health check.
func (p *serverProc) waitReady() {
	p.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, _, code := runWrit(p.t, nil, "server", "healthcheck", "--admin-socket", p.socket, "--timeout", "1s"); code == 0 {
			return
		}
		select {
		case <-p.done:
			p.t.Fatalf("server exited during start-up: %v\n%s", p.err, tail(p.log.String(), 40))
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("server did not become healthy\n%s", tail(p.log.String(), 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// launchServer starts a server without waiting for it.
func launchServer(t testing.TB, dataDir string, extra ...string) *serverProc {
	t.Helper()
	p := &serverProc{t: t, log: &syncBuffer{}, dataDir: dataDir, socket: filepath.Join(dataDir, "admin.sock"), done: make(chan struct{})}
	for i, a := range extra {
		if a == "--admin-socket" && i+1 < len(extra) {
			p.socket = extra[i+1]
		}
	}
	args := []string{"server", "run", "--trust-domain", "example.org", "--data-dir", dataDir, "--log-level", "debug"}
	if !slices.Contains(extra, "--bind-address") {
		args = append(args, "--bind-address", "127.0.0.1:0")
	}
	args = append(args, extra...)
	p.cmd = exec.Command(writBin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.Env = cleanEnv()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("server log (last lines):\n%s", tail(p.log.String(), 40))
		}
	})
	return p
}

// nodeAddress returns the node API address the server logged when ready.
func (p *serverProc) nodeAddress() string {
	p.t.Helper()
	for _, line := range strings.Split(p.log.String(), "\n") {
		if !strings.Contains(line, `msg="server ready"`) {
			continue
		}
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "bind_address="); ok {
				return v
			}
		}
	}
	p.t.Fatalf("server logged no bind address:\n%s", tail(p.log.String(), 20))
	return ""
}

// wait waits for the process to exit and returns its error.
func (p *serverProc) wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		p.t.Fatalf("server did not exit within %s\n%s", timeout, p.log)
		return nil
	}
}

// stop sends SIGTERM and requires a clean exit.
func (p *serverProc) stop() {
	p.t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.wait(15 * time.Second); err != nil {
		p.t.Fatalf("server exit after SIGTERM: %v\n%s", err, p.log)
	}
}

// kill sends SIGKILL.
func (p *serverProc) kill() {
	p.cmd.Process.Kill()
	<-p.done
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WRIT_") && !strings.HasPrefix(kv, "SPIFFE_") {
			env = append(env, kv)
		}
	}
	return env
}

// runWrit runs the writ binary and returns stdout, stderr and exit code.
func runWrit(t testing.TB, stdin []byte, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, writBin, args...)
	cmd.Env = cleanEnv()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run writ %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// admin runs an admin command against p and requires success.
func (p *serverProc) admin(args ...string) string {
	p.t.Helper()
	out, errOut, code := runWrit(p.t, nil, append(args, "--admin-socket", p.socket)...)
	if code != 0 {
		p.t.Fatalf("writ %v: exit %d: %s", args, code, errOut)
	}
	return out
}

// adminJSON runs an admin command with --output json and decodes stdout.
func (p *serverProc) adminJSON(v any, args ...string) {
	p.t.Helper()
	out := p.admin(append(args, "--output", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		p.t.Fatalf("writ %v: decode %q: %v", args, out, err)
	}
}

// jsonEntry is an entry as `--output json` prints it.
type jsonEntry struct {
	ID          string   `json:"id"`
	SPIFFEID    string   `json:"spiffe_id"`
	ParentID    string   `json:"parent_id"`
	Selectors   []string `json:"selectors"`
	X509SVIDTTL int64    `json:"x509_svid_ttl"`
	JWTSVIDTTL  int64    `json:"jwt_svid_ttl"`
	DNSNames    []string `json:"dns_names"`
	Admin       bool     `json:"admin"`
	Downstream  bool     `json:"downstream"`
}
