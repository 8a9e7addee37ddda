package integration_test

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readmeSection returns the ```sh blocks of the README section whose
// heading is heading, in order.
func readmeSection(t *testing.T, heading string) []string {
	t.Helper()
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(data), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("README.md has no section %q", heading)
	}
	if i := strings.Index(sec, "\n## "); i >= 0 {
		sec = sec[:i]
	}
	var blocks []string
	for {
		_, rest, ok := strings.Cut(sec, "```sh\n")
		if !ok {
			return blocks
		}
		block, after, _ := strings.Cut(rest, "```\n")
		blocks = append(blocks, block)
		sec = after
	}
}

// TestIntegrationReadmeNodeAttestation runs the README's x509pop and sshpop
// walkthrough as written, in a directory of its own with ./writ the
// binary under test. The test changes only what isolation needs: the
// server's port (8081 becomes a free one), the server and agents run in
// the background, and it waits for the agents and their SVIDs where a
// reader would.
func TestIntegrationReadmeNodeAttestation(t *testing.T) {
	needTool(t, "ssh-keygen", "apt-get install openssh-client; .ci/run does")
	needTool(t, "openssl", "apt-get install openssl")
	blocks := readmeSection(t, "### Enrol hosts without tokens: x509pop and sshpop")
	if len(blocks) != 4 {
		t.Fatalf("README section has %d sh blocks, want 4 (PKI, server, agents, alias)", len(blocks))
	}
	dir := shortTempDir(t)
	if err := os.Symlink(writBin, filepath.Join(dir, "writ")); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := lis.Addr().String()
	lis.Close()
	pki, server, agents, alias := blocks[0], blocks[1], blocks[2], blocks[3]
	server = strings.TrimSpace(strings.ReplaceAll(server, "\\\n", " ")) + " --bind-address " + port + " >server.log 2>&1 &\n" +
		"for i in $(seq 300); do ./writ server healthcheck >/dev/null 2>&1 && break; sleep 0.1; done\n"
	agents = strings.ReplaceAll(agents, "127.0.0.1:8081", port)
	agents = strings.Replace(agents, "./writ agent list", "for i in $(seq 300); do [ \"$(./writ agent list --output json | grep -c spiffe_id)\" = 3 ] && break; sleep 0.1; done\n./writ agent list", 1)
	// The alias block: every fetch is retried until the agent has synced
	// the new entries; the last one must keep failing.
	var aliasScript strings.Builder
	for _, line := range strings.Split(strings.ReplaceAll(alias, "\\\n", " "), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "":
		case strings.Contains(line, "svid fetch") && strings.Contains(line, "ssh1.sock"):
			aliasScript.WriteString("sleep 1; echo SSH1-FETCH; " + strings.SplitN(line, "#", 2)[0] + " 2>&1 || echo SSH1-REFUSED\n")
		case strings.Contains(line, "svid fetch"):
			aliasScript.WriteString("for i in $(seq 100); do out=$(" + strings.SplitN(line, "#", 2)[0] + " 2>&1) && echo \"$out\" | grep -q frontend && break; sleep 0.1; done; echo \"$out\"\n")
		default:
			aliasScript.WriteString(line + "\n")
		}
	}
	script := "set -eu\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\ncd " + dir + "\n" + pki + server + agents + aliasScript.String()
	cmd := exec.Command("bash", "-c", script)
	// mktemp -d makes the README's TMP inside the test's directory.
	cmd.Env = append(cleanEnv(), "TMPDIR="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	done := make(chan struct{})
	t.Cleanup(func() {
		if cmd.Process != nil {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		<-done
	})
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		close(done)
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- cmd.Wait(); close(done) }()
	select {
	case err = <-errc:
	case <-time.After(3 * time.Minute):
		t.Fatalf("walkthrough still running after 3 minutes:\n%s", tail(out.String(), 40))
	}
	log := out.String()
	if err != nil {
		t.Fatalf("walkthrough failed: %v\n%s\nserver log:\n%s", err, tail(log, 40), readTail(filepath.Join(dir, "server.log")))
	}
	for _, want := range []string{"x509pop:subject:ou:web", "sshpop:principal:ssh1.example.org", "Attestation type : sshpop"} {
		if !strings.Contains(log, want) {
			t.Errorf("agent list does not show %q:\n%s", want, log)
		}
	}
	if n := strings.Count(log, "SPIFFE ID        : spiffe://example.org/frontend"); n != 2 {
		t.Errorf("web1 and web2 fetched %d frontend SVIDs, want 2:\n%s", n, log)
	}
	_, ssh1, _ := strings.Cut(log, "SSH1-FETCH")
	if !strings.Contains(ssh1, "no identity issued") || !strings.Contains(ssh1, "SSH1-REFUSED") || strings.Contains(ssh1, "spiffe://example.org/frontend") {
		t.Errorf("ssh1 was not refused:\n%s", ssh1)
	}
}

func readTail(path string) string {
	b, _ := os.ReadFile(path)
	return tail(string(b), 30)
}
