package integration_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// agentProc is a running `writ agent run`.
type agentProc struct {
	t       testing.TB
	cmd     *exec.Cmd
	log     *syncBuffer
	dataDir string
	socket  string
	done    chan struct{}
	err     error
}

// startAgent starts an agent of the server at addr and waits until it
// holds a valid agent SVID. token may be empty (a restarted agent).
func startAgent(t testing.TB, addr, dataDir, bundlePEM, token string) *agentProc {
	t.Helper()
	return startAgentWith(t, addr, dataDir, bundlePEM, tokenEnv(token))
}

// startAgentWith starts an agent with more environment variables and
// flags (such as a node attestor's) and waits until it holds a valid
// agent SVID.
func startAgentWith(t testing.TB, addr, dataDir, bundlePEM string, env []string, extra ...string) *agentProc {
	t.Helper()
	p := launchAgentWith(t, addr, dataDir, bundlePEM, env, extra...)
	p.waitHealthy(true, 30*time.Second)
	return p
}

// launchAgent starts an agent without waiting for it.
func launchAgent(t testing.TB, addr, dataDir, bundlePEM, token string) *agentProc {
	t.Helper()
	return launchAgentWith(t, addr, dataDir, bundlePEM, tokenEnv(token))
}

func tokenEnv(token string) []string {
	if token == "" {
		return nil
	}
	return []string{"WRIT_JOIN_TOKEN=" + token}
}

// launchAgentWith starts an agent with more environment variables and
// flags without waiting for it.
func launchAgentWith(t testing.TB, addr, dataDir, bundlePEM string, env []string, extra ...string) *agentProc {
	t.Helper()
	p := &agentProc{t: t, log: &syncBuffer{}, dataDir: dataDir, socket: filepath.Join(dataDir+"-public", "api.sock"), done: make(chan struct{})}
	args := []string{"agent", "run", "--server-address", addr, "--data-dir", dataDir,
		"--socket-path", p.socket, "--trust-bundle", bundlePEM, "--log-level", "debug"}
	if !slices.Contains(extra, "--trust-domain") {
		args = append(args, "--trust-domain", "example.org")
	}
	p.cmd = exec.Command(writBin, append(args, extra...)...)
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
			t.Logf("agent %s log (last lines):\n%s", dataDir, tail(p.log.String(), 40))
		}
	})
	return p
}

func (p *agentProc) healthy() bool {
	_, _, code := runWrit(p.t, nil, "agent", "healthcheck", "--data-dir", p.dataDir, "--timeout", "1s")
	return code == 0
}

// waitHealthy waits until the agent's health is want.
func (p *agentProc) waitHealthy(want bool, timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for p.healthy() != want {
		select {
		case <-p.done:
			if want {
				p.t.Fatalf("agent exited: %v\n%s", p.err, tail(p.log.String(), 40))
			}
			return
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("agent health did not become %v within %s\n%s", want, timeout, tail(p.log.String(), 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *agentProc) stop() {
	p.t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			p.t.Fatalf("agent exit after SIGTERM: %v\n%s", p.err, tail(p.log.String(), 20))
		}
	case <-time.After(15 * time.Second):
		p.t.Fatalf("agent did not stop\n%s", tail(p.log.String(), 20))
	}
}

// nodeEnv is a server with its bundle written to a PEM file.
type nodeEnv struct {
	t      *testing.T
	dir    string
	server *serverProc
	addr   string
	bundle string
}

func newNodeEnv(t *testing.T, serverArgs ...string) *nodeEnv {
	dir := shortTempDir(t)
	s := startServer(t, filepath.Join(dir, "server"), serverArgs...)
	e := &nodeEnv{t: t, dir: dir, server: s, addr: s.nodeAddress(), bundle: filepath.Join(dir, "bundle.pem")}
	if err := os.WriteFile(e.bundle, []byte(s.admin("bundle", "show")), 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *nodeEnv) token(id string) string {
	return strings.TrimSpace(e.server.admin("token", "generate", "--spiffe-id", id))
}

// agentIDs returns the SPIFFE IDs `writ agent list` shows.
func (e *nodeEnv) agentIDs() []string {
	var agents []struct {
		SPIFFEID string `json:"spiffe_id"`
		Banned   bool   `json:"banned"`
	}
	e.server.adminJSON(&agents, "agent", "list")
	var ids []string
	for _, a := range agents {
		ids = append(ids, a.SPIFFEID)
	}
	slices.Sort(ids)
	return ids
}

func TestIntegrationAgentsAttestRestartEvict(t *testing.T) {
	e := newNodeEnv(t)
	a := startAgent(t, e.addr, filepath.Join(e.dir, "a"), e.bundle, e.token("spiffe://example.org/writ/agent/a"))
	b := startAgent(t, e.addr, filepath.Join(e.dir, "b"), e.bundle, e.token("spiffe://example.org/writ/agent/b"))
	if got := e.agentIDs(); !slices.Equal(got, []string{"spiffe://example.org/writ/agent/a", "spiffe://example.org/writ/agent/b"}) {
		t.Fatalf("agent list: %v", got)
	}
	// The processes that hold private keys write no core file.
	for _, pid := range []int{e.server.cmd.Process.Pid, a.cmd.Process.Pid, b.cmd.Process.Pid} {
		checkNoCoreFile(t, pid)
	}
	for _, p := range []*agentProc{a, b} {
		for name, want := range map[string]os.FileMode{"agent_state.json": 0o600, "": 0o700} {
			fi, err := os.Stat(filepath.Join(p.dataDir, name))
			if err != nil || fi.Mode().Perm() != want {
				t.Errorf("%s/%s: %v %v", p.dataDir, name, fi.Mode(), err)
			}
		}
	}

	// A reused token is refused with a clear message.
	tok := e.token("spiffe://example.org/writ/agent/c")
	startAgent(t, e.addr, filepath.Join(e.dir, "c"), e.bundle, tok).stop()
	out, errOut, code := runWrit(t, nil, "agent", "run", "--server-address", e.addr, "--trust-domain", "example.org",
		"--data-dir", filepath.Join(e.dir, "c2"), "--socket-path", filepath.Join(e.dir, "c2.sock"), "--trust-bundle", e.bundle, "--join-token", tok)
	if code == 0 || !strings.Contains(out+errOut, "join token") || strings.Contains(out+errOut, tok) {
		t.Fatalf("reused token: exit %d, output leaks the token or says nothing clear:\n%s%s", code, out, errOut)
	}

	// Restart: no token needed.
	a.stop()
	a = startAgent(t, e.addr, a.dataDir, e.bundle, "")
	if strings.Contains(a.log.String(), "agent attested") {
		t.Fatal("restarted agent attested again")
	}

	// Evict b: it loses access at once.
	start := time.Now()
	e.server.admin("agent", "evict", "--spiffe-id", "spiffe://example.org/writ/agent/b")
	b.waitHealthy(false, 5*time.Second)
	t.Logf("evicted agent unhealthy after %s", time.Since(start))
	if got := e.agentIDs(); slices.Contains(got, "spiffe://example.org/writ/agent/b") {
		t.Fatalf("evicted agent still listed: %v", got)
	}
	if !a.healthy() {
		t.Fatal("eviction of b affected a")
	}
}

// TestIntegrationAgentRefusesUntrustedServer: an agent whose bundle does
// not hold the server's CA never sends its token.
func TestIntegrationAgentRefusesUntrustedServer(t *testing.T) {
	e := newNodeEnv(t)
	other := newNodeEnv(t)
	tok := e.token("spiffe://example.org/writ/agent/a")
	out, errOut, code := runWrit(t, nil, "agent", "run", "--server-address", e.addr, "--trust-domain", "example.org",
		"--data-dir", filepath.Join(e.dir, "a"), "--socket-path", filepath.Join(e.dir, "a.sock"), "--trust-bundle", other.bundle, "--join-token", tok)
	if code == 0 {
		t.Fatalf("agent trusted a server outside its bundle:\n%s%s", out, errOut)
	}
	// The token was never presented, so it still works.
	startAgent(t, e.addr, filepath.Join(e.dir, "b"), e.bundle, tok)
}

// checkNoCoreFile fails t unless process pid's core-file limit is zero.
func checkNoCoreFile(t *testing.T, pid int) {
	t.Helper()
	limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(limits), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max core file size"); ok {
			if f := strings.Fields(rest); len(f) < 2 || f[0] != "0" || f[1] != "0" {
				t.Errorf("process %d: core-file limit %q, want 0 0", pid, strings.TrimSpace(rest))
			}
			return
		}
	}
	t.Errorf("process %d: no core-file limit in /proc/%d/limits", pid, pid)
}
