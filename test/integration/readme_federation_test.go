package integration_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestIntegrationREADMEFederation runs the README's walkthrough that
// federates two trust domains on one machine, as one bash script, as
// written: only its fixed ports are replaced by free ones, and mktemp
// works in the test's directory.
func TestIntegrationREADMEFederation(t *testing.T) {
	shim := buildExamples(t)
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const heading = "#### Two federated trust domains on one machine"
	_, rest, ok := strings.Cut(string(data), heading)
	if !ok {
		t.Fatalf("README.md has no %q", heading)
	}
	_, rest, ok = strings.Cut(rest, "```sh\n")
	script, _, ok2 := strings.Cut(rest, "```\n")
	if !ok || !ok2 || !strings.Contains(script, "--federates-with") {
		t.Fatal("cannot find the walkthrough's script in README.md")
	}
	for _, port := range []string{"8091", "8092", "8491", "8492"} {
		if !strings.Contains(script, "127.0.0.1:"+port) {
			t.Fatalf("the walkthrough no longer uses port %s", port)
		}
		script = strings.ReplaceAll(script, "127.0.0.1:"+port, freePort(t))
	}

	dir := shortTempDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-e", "-c", script)
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(), "PATH="+shim+":"+os.Getenv("PATH"), "TMPDIR="+dir)
	// Its own process group: if the script fails half-way, the servers
	// and agents it started in the background are killed with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if err != nil {
		t.Fatalf("walkthrough: %v\nstdout:\n%s\nstderr:\n%s", err, tail(out.String(), 60), tail(errOut.String(), 40))
	}
	o := out.String()
	for _, want := range []string{
		"b.test        2         1                  1",
		"federated_bundle.b.test.pem",
		"b-svid/svid.pem: OK",
		"a-svid/svid.pem: OK",
	} {
		if !strings.Contains(o, want) {
			t.Errorf("the walkthrough's output lacks %q:\n%s", want, o)
		}
	}
	if lines := strings.Split(strings.TrimSpace(o), "\n"); lines[len(lines)-1] != "spiffe://a.test/client" {
		t.Errorf("jwt validate at b.test printed %q, want spiffe://a.test/client", lines[len(lines)-1])
	}
}
