package integration_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// The README walkthrough, run as written. Each command below is checked
// to appear verbatim in README.md (continuation lines joined) and run
// with bash, with a `go` on PATH that maps `go run ./cmd/<name>` and
// `go build -o OUT ./cmd/<name>` to the binaries built for the tests.
// What the test adds for isolation is appended as extra flags (a socket
// path and ports of its own) or substituted (/tmp/greeter-client), and
// the `export` lines are the ones `writ dev` prints, as the README says.
const (
	readmeDev          = "go run ./cmd/writ dev"
	readmeSVIDFetch    = "go run ./cmd/writ svid fetch"
	readmeJWTFetch     = "go run ./cmd/writ jwt fetch --audience greeter"
	readmeBuildServer  = "go build -o /tmp/greeter-server ./cmd/examples/greeter-server"
	readmeBuildClient  = "go build -o /tmp/greeter-client ./cmd/examples/greeter-client"
	readmeServer       = "/tmp/greeter-server &"
	readmeClient       = "/tmp/greeter-client"
	readmeIntruder     = "go run ./cmd/writ entry create --spiffe-id spiffe://example.org/dev/$(id -un)/intruder --parent-id spiffe://example.org/writ/agent/dev --selector unix:uid:$(id -u)"
	readmeIntruderCall = "/tmp/greeter-client --spiffe-id spiffe://example.org/dev/$(id -un)/intruder"
	readmeOther        = "OTHER=nobody"
	readmeOtherEntry   = "go run ./cmd/writ entry create --spiffe-id spiffe://example.org/dev/$OTHER --parent-id spiffe://example.org/writ/agent/dev --selector unix:uid:$(id -u $OTHER)"
	readmeOtherList    = "go run ./cmd/writ entry list --parent-id spiffe://example.org/writ/agent/dev"
	readmeOtherCall    = "runuser -u $OTHER -- env SPIFFE_ENDPOINT_SOCKET=$SPIFFE_ENDPOINT_SOCKET /tmp/greeter-client --server-id spiffe://example.org/dev/$(id -un)"
)

var (
	examplesOnce sync.Once
	examplesErr  error
)

// buildExamples builds the example binaries beside writBin, as TestMain
// builds writ (with the race detector when the tests run with it), and a
// `go` shim for the README's commands. It returns the shim's directory.
func buildExamples(t *testing.T) string {
	t.Helper()
	dir := filepath.Dir(writBin)
	examplesOnce.Do(func() {
		args := append([]string{"build", "-o", dir + "/"}, buildFlags...)
		args = append(args, "writ.dev/writ/cmd/examples/greeter-server", "writ.dev/writ/cmd/examples/greeter-client")
		if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
			examplesErr = fmt.Errorf("build the examples: %v\n%s", err, out)
			return
		}
		shim := fmt.Sprintf(`#!/bin/sh
# go, for the README test: runs the binaries built for the tests.
bin=%q
case "$1" in
run) name=$(basename "$2"); shift 2; exec "$bin/$name" "$@" ;;
build) [ "$2" = -o ] && [ $# = 4 ] || { echo "go shim: want go build -o OUT PKG" >&2; exit 2; }
       cp "$bin/$(basename "$4")" "$3" ;;
*) echo "go shim: unexpected: go $*" >&2; exit 2 ;;
esac
`, dir)
		if err := os.MkdirAll(filepath.Join(dir, "shim"), 0o755); err != nil {
			examplesErr = err
			return
		}
		examplesErr = os.WriteFile(filepath.Join(dir, "shim", "go"), []byte(shim), 0o755)
	})
	if examplesErr != nil {
		t.Fatal(examplesErr)
	}
	return filepath.Join(dir, "shim")
}

// walkthrough runs README commands in dir.
type walkthrough struct {
	t      *testing.T
	readme string // README.md with continuation lines joined
	dir    string
	env    []string
	// subst holds replacements made in commands after they are found in
	// the README, before they run.
	subst [][2]string
}

func newWalkthrough(t *testing.T, dir, shim string) *walkthrough {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := regexp.MustCompile(`\\\n\s*`).ReplaceAllString(string(data), "")
	env := append(cleanEnv(), "PATH="+shim+":"+os.Getenv("PATH"))
	return &walkthrough{t: t, readme: readme, dir: dir, env: env}
}

func (w *walkthrough) setenv(k, v string) {
	w.env = append(w.env, k+"="+v)
}

// command returns the process of README line `line` (which must be in the
// README) with extra appended, run by bash.
func (w *walkthrough) command(ctx context.Context, line, extra string) *exec.Cmd {
	w.t.Helper()
	if !strings.Contains(w.readme, line) {
		w.t.Fatalf("README.md does not hold the command %q", line)
	}
	script := strings.TrimSuffix(line, " &")
	for _, r := range w.subst {
		script = strings.ReplaceAll(script, r[0], r[1])
	}
	script += extra
	cmd := exec.CommandContext(ctx, "bash", "-c", "exec "+script)
	cmd.Dir = w.dir
	cmd.Env = w.env
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// run runs a README command and returns its stdout, stderr and exit code.
func (w *walkthrough) run(line, extra string) (string, string, int) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := w.command(ctx, line, extra)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	began := time.Now()
	err := cmd.Run()
	if d := time.Since(began); d > 2*time.Second {
		w.t.Logf("%s took %s", line, d.Round(time.Millisecond))
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		w.t.Fatalf("%s: %v", line, err)
	}
	return out.String(), errb.String(), code
}

// mustRun runs a README command that must succeed.
func (w *walkthrough) mustRun(line, extra string) string {
	w.t.Helper()
	out, errOut, code := w.run(line, extra)
	if code != 0 {
		w.t.Fatalf("%s%s: exit %d\n%s%s", line, extra, code, out, errOut)
	}
	return out
}

// bgProc is a README command running in the background.
type bgProc struct {
	cmd      *exec.Cmd
	out, log *syncBuffer
	done     chan struct{}
	err      error
}

func (w *walkthrough) start(line, extra string) *bgProc {
	w.t.Helper()
	p := &bgProc{out: &syncBuffer{}, log: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = w.command(context.Background(), line, extra)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.log
	if err := p.cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	w.t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if w.t.Failed() {
			w.t.Logf("%s%s:\n%s\n%s", line, extra, tail(p.out.String(), 30), tail(p.log.String(), 40))
		}
	})
	return p
}

// waitOutput waits until the process prints want on stdout.
func (p *bgProc) waitOutput(t *testing.T, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(p.out.String(), want) {
		select {
		case <-p.done:
			t.Fatalf("exited (%v) before printing %q:\n%s\n%s", p.err, want, p.out, tail(p.log.String(), 40))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("did not print %q within %s:\n%s\n%s", want, timeout, p.out, tail(p.log.String(), 40))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// interrupt sends SIGINT (Ctrl-C) and requires a clean exit.
func (p *bgProc) interrupt(t *testing.T) {
	t.Helper()
	began := time.Now()
	defer func() { t.Logf("stopped %s after Ctrl-C", time.Since(began).Round(time.Millisecond)) }()
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
		if p.err != nil {
			t.Fatalf("exit after Ctrl-C: %v\n%s", p.err, tail(p.log.String(), 20))
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("did not stop within 20s of Ctrl-C\n%s", tail(p.log.String(), 20))
	}
}

// exports returns the `export K=V` lines of writ dev's output.
func exports(t *testing.T, out string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if kv, ok := strings.CutPrefix(strings.TrimSpace(line), "export "); ok {
			k, v, _ := strings.Cut(kv, "=")
			m[k] = v
		}
	}
	for _, k := range []string{"SPIFFE_ENDPOINT_SOCKET", "WRIT_ADMIN_SOCKET"} {
		if m[k] == "" {
			t.Fatalf("writ dev printed no export of %s:\n%s", k, out)
		}
	}
	return m
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestIntegrationReadmeWalkthrough runs the README's newcomer path: writ
// dev, svid fetch, the greeter pair over mTLS and with a JWT-SVID, a
// caller the server refuses, an entry for another uid, Ctrl-C, and a
// restart that resumes the same CA and identities.
func TestIntegrationReadmeWalkthrough(t *testing.T) {
	shim := buildExamples(t)
	dir := shortTempDir(t)
	w := newWalkthrough(t, dir, shim)
	// A socket of the test's own: a developer's `writ dev` may hold the
	// default one.
	socket := filepath.Join(dir, "s", "api.sock")
	devExtra := " --socket-path " + socket + " --log-level info"

	// 1. writ dev: an identity within seconds.
	start := time.Now()
	dev := w.start(readmeDev, devExtra)
	dev.waitOutput(t, "writ dev is ready", 90*time.Second)
	t.Logf("writ dev ready after %s (first start)", time.Since(start).Round(time.Millisecond))
	env := exports(t, dev.out.String())
	if want := "unix://" + socket; env["SPIFFE_ENDPOINT_SOCKET"] != want {
		t.Fatalf("SPIFFE_ENDPOINT_SOCKET=%s, want %s", env["SPIFFE_ENDPOINT_SOCKET"], want)
	}
	for k, v := range env {
		w.setenv(k, v)
	}
	m := regexp.MustCompile(`Your identity: +(spiffe://\S+)`).FindStringSubmatch(dev.out.String())
	if m == nil {
		t.Fatalf("writ dev printed no identity:\n%s", dev.out)
	}
	me := m[1]
	login, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	byLogin := me == "spiffe://example.org/dev/"+login.Username

	// A second writ dev on the same data dir refuses, clearly.
	out, errOut, code := w.run(readmeDev, " --socket-path "+filepath.Join(dir, "s", "other.sock"))
	if code == 0 || !strings.Contains(errOut, "locked by another writ process") {
		t.Fatalf("second writ dev: exit %d\n%s%s", code, out, errOut)
	}

	// 2. Fetch the identity.
	if out := w.mustRun(readmeSVIDFetch, ""); !strings.Contains(out, "SPIFFE ID        : "+me) {
		t.Fatalf("svid fetch does not show %s:\n%s", me, out)
	}
	if out := w.mustRun(readmeJWTFetch, ""); strings.Count(strings.TrimSpace(out), ".") != 2 {
		t.Fatalf("jwt fetch printed no JWT: %q", out)
	}

	// 3. The greeter pair, built first (go run would not pass on the
	// signal that stops the server): mTLS and JWT-SVID. The binaries go
	// to the test's directory, not /tmp.
	w.subst = append(w.subst,
		[2]string{"/tmp/greeter-server", filepath.Join(w.dir, "greeter-server")},
		[2]string{"/tmp/greeter-client", filepath.Join(w.dir, "greeter-client")})
	w.mustRun(readmeBuildServer, "")
	w.mustRun(readmeBuildClient, "")
	mtls, jwt := freePort(t), freePort(t)
	ports := " --mtls-addr " + mtls + " --jwt-addr " + jwt
	server := w.start(readmeServer, ports)
	server.waitOutput(t, "allowing: "+me, 30*time.Second)
	out = w.mustRun(readmeClient, ports)
	for _, want := range []string{
		"mTLS      https://" + mtls + "/hello: Hello, " + me + "! You called " + me + " over mTLS.",
		"JWT-SVID  https://" + jwt + "/hello: Hello, " + me + "! You called " + me + " with a JWT-SVID",
	} {
		if !strings.Contains(out, want) {
			t.Fatalf("greeter-client output lacks %q:\n%s", want, out)
		}
	}

	if !byLogin {
		t.Logf("the dev ID %s is not by login name %q: the README's $(id -un) steps do not apply", me, login.Username)
	} else {
		// 4. A second identity for this uid, which the server refuses.
		w.mustRun(readmeIntruder, "")
		intruder := me + "/intruder"
		waitFor(t, 20*time.Second, func() bool {
			return strings.Contains(w.mustRun(readmeSVIDFetch, ""), intruder)
		})
		out, errOut, code = w.run(readmeIntruderCall, ports)
		if code == 0 || strings.Count(out, ": refused: ") != 2 || !strings.Contains(out, "403 Forbidden") {
			t.Fatalf("the intruder was not refused on both endpoints: exit %d\n%s%s", code, out, errOut)
		}
		waitFor(t, 5*time.Second, func() bool {
			return strings.Contains(server.log.String(), "not allowed: "+intruder) && strings.Contains(server.log.String(), "spiffe_id="+intruder)
		})
		// The first identity is still welcome.
		w.mustRun(readmeClient, ports)

		// 5. An entry for another uid.
		w.otherUID(t, me, ports)
	}

	// Ctrl-C stops everything cleanly.
	bundle := mustWrit(t, "bundle", "show", "--admin-socket", env["WRIT_ADMIN_SOCKET"])
	server.interrupt(t)
	dev.interrupt(t)
	if !strings.Contains(dev.out.String(), "writ dev stopped") {
		t.Fatalf("no stop message:\n%s", dev.out)
	}
	if _, err := os.Lstat(socket); err == nil {
		t.Fatal("the Workload API socket is still there after Ctrl-C")
	}

	// Again: same CA, same agent (no new attestation), same entries.
	start = time.Now()
	dev = w.start(readmeDev, devExtra)
	dev.waitOutput(t, "writ dev is ready", 60*time.Second)
	t.Logf("writ dev ready after %s (restart)", time.Since(start).Round(time.Millisecond))
	if got := mustWrit(t, "bundle", "show", "--admin-socket", env["WRIT_ADMIN_SOCKET"]); got != bundle {
		t.Fatal("the CA changed across a restart")
	}
	if strings.Contains(dev.log.String(), `msg="agent attested"`) {
		t.Fatalf("the agent attested again on restart:\n%s", dev.log)
	}
	if out := w.mustRun(readmeSVIDFetch, ""); !strings.Contains(out, me) {
		t.Fatalf("svid fetch after restart:\n%s", out)
	}
	if n := strings.Count(mustWrit(t, "entry", "list", "--spiffe-id", me, "--admin-socket", env["WRIT_ADMIN_SOCKET"]), "Entry ID"); n != 1 {
		t.Fatalf("%d entries for %s after a restart, want 1", n, me)
	}
	dev.interrupt(t)
}

// otherUID runs the README's step 5: an entry for another user's uid;
// that user's client gets its own identity, and the server refuses it.
// Running a process as another uid needs root (CI runs as root, with the
// writ-test user); elsewhere only the registration is checked.
func (w *walkthrough) otherUID(t *testing.T, me, ports string) {
	t.Helper()
	if !strings.Contains(w.readme, readmeOther) {
		t.Fatalf("README.md does not hold %q", readmeOther)
	}
	other := "nobody"
	root := os.Geteuid() == 0
	if root {
		testUser(t)
		other = "writ-test"
	}
	if _, err := user.Lookup(other); err != nil {
		t.Logf("no user %s: step 5 skipped", other)
		return
	}
	w.setenv("OTHER", other)
	w.mustRun(readmeOtherEntry, "")
	otherID := "spiffe://example.org/dev/" + other
	if out := w.mustRun(readmeOtherList, ""); !strings.Contains(out, otherID) {
		t.Fatalf("entry list lacks %s:\n%s", otherID, out)
	}
	if !root {
		t.Log("not root: the client is not run as another uid")
		return
	}
	// The other user reaches the socket and the binary through the test's
	// directory.
	if err := os.Chmod(w.dir, 0o711); err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("runuser"); err != nil {
		// Without runuser, sudo does the same, as the README says.
		if _, err := exec.LookPath("sudo"); err != nil {
			t.Log("neither runuser nor sudo: the client is not run as another uid")
			return
		}
		w.subst = append(w.subst, [2]string{"runuser -u $OTHER -- ", "sudo -u $OTHER "})
	}
	var out, errOut string
	var code int
	waitFor(t, 20*time.Second, func() bool {
		out, errOut, code = w.run(readmeOtherCall, ports)
		return strings.Contains(out, "greeter-client "+otherID)
	})
	if code == 0 || strings.Count(out, ": refused: ") != 2 || !strings.Contains(out, "calling a server with ID "+me) {
		t.Fatalf("uid %s: exit %d\n%s%s", other, code, out, errOut)
	}
}

// waitFor polls cond until it holds, failing after timeout.
func waitFor(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// mustWrit runs the writ binary (not a README command) and requires
// success.
func mustWrit(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := runWrit(t, nil, args...)
	if code != 0 {
		t.Fatalf("writ %v: exit %d: %s", args, code, errOut)
	}
	return out
}
