package upstream_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

var writBin string

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
	// The binary is built in Writ's own module (two levels up): this
	// module does not depend on it, so that the upstreams' dependencies
	// and Writ's are resolved apart.
	cmd := exec.Command("go", "build", "-o", writBin, "./cmd/writ")
	cmd.Dir = filepath.Join("..", "..")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build writ:", err)
		return 1
	}
	return m.Run()
}

// shortTempDir returns a temporary directory with a short path (for Unix
// sockets), removed when the test ends.
func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "u")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// mintCA makes a CA certificate named cn signed by parent (self-signed if
// parent is nil) with path length pathLen (-1: unlimited).
func mintCA(t *testing.T, cn string, parent *x509.Certificate, parentKey crypto.Signer, pathLen int) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(30 * 24 * time.Hour),
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            pathLen,
		MaxPathLenZero:        pathLen == 0,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func certPEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

func keyPEM(t *testing.T, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
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

func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WRIT_") && !strings.HasPrefix(kv, "SPIFFE_") {
			env = append(env, kv)
		}
	}
	return env
}

// proc is a running writ process.
type proc struct {
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
	err  error // set before done closes
}

func launch(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{log: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(writBin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.Env = append(cleanEnv(), env...)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("writ %s log:\n%s", args[0], tail(p.log.String(), 40))
		}
	})
	return p
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// runWrit runs writ to completion and returns stdout, stderr and exit code.
func runWrit(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, writBin, args...)
	cmd.Env = cleanEnv()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), errb.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run writ %v: %v", args, err)
	}
	return out.String(), errb.String(), 0
}

// waitFor polls cond every 50ms until it holds or timeout passes.
func waitFor(t *testing.T, p *proc, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		select {
		case <-p.done:
			t.Fatalf("%s: process exited: %v\n%s", what, p.err, tail(p.log.String(), 40))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s\n%s", what, timeout, tail(p.log.String(), 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// chained is a writ server under an upstream, with an agent trusting
// only the upstream root.
type chained struct {
	t        *testing.T
	server   *proc
	agent    *proc
	admin    string // the admin socket
	socket   string // the agent's Workload API socket
	rootFile string
}

// run runs an admin command and returns its stdout, stderr and exit code.
func (c *chained) run(args ...string) (string, string, int) {
	c.t.Helper()
	return runWrit(c.t, append(args, "--admin-socket", c.admin)...)
}

// mustRun runs an admin command that must succeed.
func (c *chained) mustRun(args ...string) string {
	c.t.Helper()
	out, errOut, code := c.run(args...)
	if code != 0 {
		c.t.Fatalf("writ %v: exit %d: %s", args, code, errOut)
	}
	return out
}

// checkChained runs a writ server with serverArgs (an upstream
// authority), an agent trusting only rootFile, and a workload entry; the
// workload's X.509-SVID must verify with go-spiffe against a bundle built
// from rootFile alone, and the server's published bundle must be that
// root alone.
func checkChained(t *testing.T, dir, rootFile string, serverArgs ...string) *chained {
	t.Helper()
	data := filepath.Join(dir, "server")
	c := &chained{t: t, admin: filepath.Join(data, "admin.sock"), socket: filepath.Join(dir, "api.sock"), rootFile: rootFile}
	args := append([]string{"server", "run", "--trust-domain", "example.org", "--data-dir", data, "--bind-address", "127.0.0.1:0", "--log-level", "debug"}, serverArgs...)
	c.server = launch(t, nil, args...)
	waitFor(t, c.server, 60*time.Second, "server healthy", func() bool {
		_, _, code := runWrit(t, "server", "healthcheck", "--admin-socket", c.admin, "--timeout", "1s")
		return code == 0
	})
	c.checkBundle()
	addr := ""
	for _, line := range strings.Split(c.server.log.String(), "\n") {
		if strings.Contains(line, `msg="server ready"`) {
			for _, f := range strings.Fields(line) {
				if v, ok := strings.CutPrefix(f, "bind_address="); ok {
					addr = v
				}
			}
		}
	}
	if addr == "" {
		t.Fatalf("server logged no bind address\n%s", tail(c.server.log.String(), 20))
	}
	agentID := "spiffe://example.org/writ/agent/a"
	token := strings.TrimSpace(c.mustRun("token", "generate", "--spiffe-id", agentID))
	agentData := filepath.Join(dir, "a")
	c.agent = launch(t, []string{"WRIT_JOIN_TOKEN=" + token}, "agent", "run", "--server-address", addr, "--trust-domain", "example.org",
		"--data-dir", agentData, "--socket-path", c.socket, "--trust-bundle", rootFile, "--log-level", "debug")
	waitFor(t, c.agent, 60*time.Second, "agent healthy", func() bool {
		_, _, code := runWrit(t, "agent", "healthcheck", "--data-dir", agentData, "--timeout", "1s")
		return code == 0
	})
	c.mustRun("entry", "create", "--spiffe-id", "spiffe://example.org/web", "--parent-id", agentID, "--selector", "unix:uid:"+strconv.Itoa(os.Getuid()))
	c.checkSVIDs()
	return c
}

// checkBundle requires the published bundle to be the upstream root alone.
func (c *chained) checkBundle() {
	c.t.Helper()
	rootPEM, err := os.ReadFile(c.rootFile)
	if err != nil {
		c.t.Fatal(err)
	}
	if published := c.mustRun("bundle", "show"); strings.TrimSpace(published) != strings.TrimSpace(string(rootPEM)) {
		c.t.Fatalf("published bundle is not the upstream root alone:\n%s", published)
	}
}

// checkSVIDs waits until the agent serves the workload its SVID, and
// verifies it with go-spiffe against the upstream root alone.
func (c *chained) checkSVIDs() {
	t := c.t
	t.Helper()
	roots, err := x509bundle.Load(spiffeid.RequireTrustDomainFromString("example.org"), c.rootFile)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	waitFor(t, c.agent, 30*time.Second, "workload SVID", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		svids, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr("unix://"+c.socket))
		if err != nil {
			return false
		}
		got = got[:0]
		for _, s := range svids {
			got = append(got, s.ID.String())
			id, _, err := x509svid.Verify(s.Certificates, roots)
			if err != nil {
				t.Fatalf("SVID %s does not verify against the upstream root alone: %v", s.ID, err)
			}
			if id != s.ID {
				t.Fatalf("verified %s, want %s", id, s.ID)
			}
			// The leaf, Writ's CA, the upstream's intermediate; no root.
			if n := len(s.Certificates); n != 3 || !s.Certificates[1].IsCA || !s.Certificates[2].IsCA || s.Certificates[2].Subject.String() == s.Certificates[2].Issuer.String() {
				t.Fatalf("SVID chain of %d certificates, want leaf, Writ CA, upstream intermediate", n)
			}
			t.Logf("SVID %s: Writ CA %q (URIs %v) issued by %q, valid until %s", s.ID, s.Certificates[1].Subject, s.Certificates[1].URIs, s.Certificates[1].Issuer, s.Certificates[1].NotAfter.UTC().Format(time.RFC3339))
		}
		return slices.Equal(got, []string{"spiffe://example.org/web"})
	})
}

// x509Authorities lists the server's X.509 CA keys.
func (c *chained) x509Authorities() []jsonAuthority {
	c.t.Helper()
	var out []jsonAuthority
	if err := json.Unmarshal([]byte(c.mustRun("ca", "x509", "show", "--output", "json")), &out); err != nil {
		c.t.Fatal(err)
	}
	return out
}

// jsonAuthority is a CA key as `writ ca x509 show --output json` prints it.
type jsonAuthority struct {
	ID            string   `json:"id"`
	State         string   `json:"state"`
	UpstreamChain []string `json:"upstream_chain"`
}
