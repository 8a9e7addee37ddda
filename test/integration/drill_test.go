package integration_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestIntegrationReadmeDrills runs the README's rotation and compromise
// drills as written, against the `writ dev` they start (its data
// directory and sockets moved to the test's), and checks what each step
// says it shows.
func TestIntegrationReadmeDrills(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(data)
	_, drills, ok := strings.Cut(readme, "#### Drills: rotation and compromise")
	if !ok {
		t.Fatal("README.md has no drills section")
	}
	blocks := regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(drills, 3)
	if len(blocks) != 3 {
		t.Fatalf("drills section: %d sh blocks, want 3", len(blocks))
	}
	dir := shortTempDir(t)
	subst := strings.NewReplacer("/tmp/writ-drill.sock", filepath.Join(dir, "api.sock"),
		"/tmp/writ-drill-svid", filepath.Join(dir, "svid"), "/tmp/writ-drill", filepath.Join(dir, "data"))
	// `go run ./cmd/writ` is the writ built for the tests.
	shim := filepath.Join(dir, "bin")
	if err := os.Mkdir(shim, 0o755); err != nil {
		t.Fatal(err)
	}
	script := "#!/bin/sh\n[ \"$1 $2\" = 'run ./cmd/writ' ] || { echo \"go shim: unexpected: go $*\" >&2; exit 2; }\nshift 2\nexec " + writBin + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(shim, "go"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	env := append(cleanEnv(), "PATH="+shim+":"+os.Getenv("PATH"))

	devLine := strings.TrimSpace(blocks[0][1])
	dev := exec.Command("bash", "-c", "exec "+subst.Replace(devLine))
	dev.Env = env
	devOut := &syncBuffer{}
	dev.Stdout, dev.Stderr = devOut, devOut
	if err := dev.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = dev.Wait(); close(done) }()
	t.Cleanup(func() {
		dev.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("writ dev:\n%s", tail(devOut.String(), 40))
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(devOut.String(), "writ dev is ready") {
		select {
		case <-done:
			t.Fatalf("writ dev exited:\n%s", devOut)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("writ dev not ready:\n%s", devOut)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var exports []string
	for _, line := range strings.Split(devOut.String(), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "export ") {
			exports = append(exports, strings.TrimSpace(line))
		}
	}
	if len(exports) != 2 {
		t.Fatalf("writ dev printed %d export lines", len(exports))
	}

	run := func(block string) (string, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "bash", "-c", strings.Join(exports, "\n")+"\n"+subst.Replace(block))
		cmd.Env, cmd.Dir = env, dir
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		// The last step of a drill may fail on purpose: only what it
		// printed is checked.
		var ee *exec.ExitError
		if err := cmd.Run(); err != nil && !errors.As(err, &ee) {
			t.Fatalf("drill: %v\n%s%s", err, out.String(), errb.String())
		}
		return out.String(), errb.String()
	}
	signedBy := regexp.MustCompile(`Signed by CA +: ([0-9a-f]+)`)

	out, errOut := run(blocks[1][1] + "\necho \"TOKEN=$TOKEN\"\n")
	if !strings.Contains(out, "new bundle acknowledged by every agent connected to this server (1)") {
		t.Fatalf("rotation drill:\n%s%s", out, errOut)
	}
	if s := signedBy.FindAllStringSubmatch(out, -1); len(s) != 2 || s[0][1] != s[1][1] {
		t.Fatalf("rotation drill: Signed by lines %v, want twice the same CA", s)
	}
	_, token, _ := strings.Cut(out, "TOKEN=")
	token = strings.TrimSpace(token)
	if token == "" {
		t.Fatal("rotation drill: no JWT-SVID")
	}

	// The compromise drill in the same shell as its TOKEN.
	oldCA := signedBy.FindStringSubmatch(out)[1]
	out, errOut = run("TOKEN=" + token + "\n" + blocks[2][1])
	s := signedBy.FindAllStringSubmatch(out, -1)
	if len(s) != 2 || s[0][1] != s[1][1] || s[0][1] == oldCA {
		t.Fatalf("compromise drill: Signed by lines %v, want the new CA twice\n%s%s", s, out, errOut)
	}
	for _, want := range []string{"tainted x509 authority", "tainted jwt authority", "revoked x509 authority", "revoked jwt authority"} {
		if !strings.Contains(out, want) {
			t.Errorf("compromise drill: no %q in\n%s", want, out)
		}
	}
	if !strings.Contains(out, "\n1\n") {
		t.Errorf("compromise drill: the written bundle does not hold exactly one CA:\n%s", out)
	}
	for _, want := range []string{"too early", "key not found"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("compromise drill: no %q in its errors:\n%s", want, errOut)
		}
	}
}
