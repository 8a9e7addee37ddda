package integration_test

import (
	"crypto/sha1" //nolint:gosec // the x509pop agent ID is a SHA-1 fingerprint
	"crypto/x509"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"writ.dev/writ/ca/attest/sshpop"
	"writ.dev/writ/internal/nodepki"
)

// needTool fails the test in CI, and skips it elsewhere, when the
// command name is not installed; hint says how to install it.
func needTool(t *testing.T, name, hint string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not installed (%s)", name, hint)
		}
		t.Skipf("%s not installed (%s)", name, hint)
	}
}

// sshKeygen runs ssh-keygen in dir.
func sshKeygen(t *testing.T, dir string, args ...string) {
	t.Helper()
	needTool(t, "ssh-keygen", "apt-get install openssh-client; .ci/run does")
	cmd := exec.Command("ssh-keygen", append([]string{"-q"}, args...)...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen %v: %v\n%s", args, err, out)
	}
}

func fileFingerprint(t *testing.T, pubFile string) string {
	t.Helper()
	b, err := os.ReadFile(pubFile)
	if err != nil {
		t.Fatal(err)
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return sshpop.Fingerprint(k)
}

func x509popID(c *x509.Certificate) string {
	s := sha1.Sum(c.Raw) //nolint:gosec // see import
	return "spiffe://example.org/writ/agent/x509pop/" + hex.EncodeToString(s[:])
}

// TestIntegrationNodeAttestation enrols agents without join tokens: two
// web hosts and a database host with x509pop certificates from a runtime
// PKI, one host with an SSH host certificate made by ssh-keygen. Every
// bad credential is refused with a clear message and creates no agent; a
// node alias delivers its workloads to both web hosts and not the third,
// and follows its selectors; an agent that lost its SVID attests again by
// itself, as does an evicted one; a banned one stays out.
func TestIntegrationNodeAttestation(t *testing.T) {
	dir := shortTempDir(t)
	pki := filepath.Join(dir, "pki")
	if err := os.Mkdir(pki, 0o700); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	ca, other := nodepki.NewCA(t, "org CA", now), nodepki.NewCA(t, "other CA", now)
	nodepki.WriteBundle(t, filepath.Join(pki, "ca.pem"), ca)
	web1 := ca.Issue(t, nodepki.Node{CN: "web1", OU: []string{"web"}, DNS: []string{"web1.example.org"}}, now)
	web2 := ca.Issue(t, nodepki.Node{CN: "web2", OU: []string{"web"}}, now)
	db1 := ca.Issue(t, nodepki.Node{CN: "db1", OU: []string{"db"}}, now)
	bad := map[string]*nodepki.Cert{
		"expired":    ca.Issue(t, nodepki.Node{CN: "old", OU: []string{"web"}, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}, now),
		"other-ca":   other.Issue(t, nodepki.Node{CN: "web9", OU: []string{"web"}}, now),
		"no-digsig":  ca.Issue(t, nodepki.Node{CN: "enc", OU: []string{"web"}, KeyUsage: x509.KeyUsageKeyEncipherment}, now),
		"wrong-pair": web2, // its key is replaced below
	}

	// SSH: a host CA, a host certificate, an expired one and a user
	// certificate, all made by ssh-keygen.
	sshKeygen(t, pki, "-t", "ed25519", "-N", "", "-C", "host-ca", "-f", "host_ca")
	for _, n := range []string{"ssh1", "sshold", "sshuser"} {
		sshKeygen(t, pki, "-t", "ed25519", "-N", "", "-f", n)
	}
	sshKeygen(t, pki, "-s", "host_ca", "-I", "ssh1", "-h", "-n", "ssh1.example.org", "-V", "-5m:+1h", "ssh1.pub")
	sshKeygen(t, pki, "-s", "host_ca", "-I", "sshold", "-h", "-n", "sshold.example.org", "-V", "20200101:20200102", "sshold.pub")
	sshKeygen(t, pki, "-s", "host_ca", "-I", "sshuser", "-n", "root", "-V", "-5m:+1h", "sshuser.pub")

	e := newNodeEnv(t, "--x509pop-ca-bundle", filepath.Join(pki, "ca.pem"), "--sshpop-cert-authority", filepath.Join(pki, "host_ca.pub"))
	x509Agent := func(name string, c *nodepki.Cert) (dataDir string, flags []string) {
		certFile, keyFile := c.Write(t, pki, name)
		return filepath.Join(e.dir, name), []string{"--node-attestor", "x509pop", "--x509pop-cert", certFile, "--x509pop-key", keyFile}
	}
	sshFlags := func(name string) []string {
		return []string{"--node-attestor", "sshpop", "--sshpop-host-key", filepath.Join(pki, name), "--sshpop-host-cert", filepath.Join(pki, name+"-cert.pub")}
	}

	// Good credentials attest.
	d1, f1 := x509Agent("web1", web1)
	a1 := startAgentWith(t, e.addr, d1, e.bundle, nil, f1...)
	d2, f2 := x509Agent("web2", web2)
	a2 := startAgentWith(t, e.addr, d2, e.bundle, nil, f2...)
	d3, f3 := x509Agent("db1", db1)
	a3 := startAgentWith(t, e.addr, d3, e.bundle, nil, f3...)
	s1 := startAgentWith(t, e.addr, filepath.Join(e.dir, "ssh1"), e.bundle, nil, sshFlags("ssh1")...)
	sshID := "spiffe://example.org/writ/agent/sshpop/" + fileFingerprint(t, filepath.Join(pki, "ssh1.pub"))
	want := []string{x509popID(db1.Cert), x509popID(web1.Cert), x509popID(web2.Cert), sshID}
	slices.Sort(want)
	if got := e.agentIDs(); !slices.Equal(got, want) {
		t.Fatalf("agents %v, want %v", got, want)
	}
	var shown struct {
		AttestationType string   `json:"attestation_type"`
		Selectors       []string `json:"node_selectors"`
	}
	e.server.adminJSON(&shown, "agent", "show", "--spiffe-id", x509popID(web1.Cert))
	if shown.AttestationType != "x509pop" || !slices.Contains(shown.Selectors, "x509pop:subject:ou:web") || !slices.Contains(shown.Selectors, "x509pop:san:dns:web1.example.org") {
		t.Errorf("agent show: %+v", shown)
	}

	// Bad credentials are refused, clearly, and create no agent.
	run := func(name string, flags []string) string {
		out, errOut, code := runWrit(t, nil, append([]string{"agent", "run", "--server-address", e.addr, "--trust-domain", "example.org",
			"--data-dir", filepath.Join(e.dir, "bad-"+name), "--socket-path", filepath.Join(e.dir, "bad-"+name+".sock"), "--trust-bundle", e.bundle}, flags...)...)
		if code == 0 {
			t.Fatalf("%s: agent ran", name)
		}
		return out + errOut
	}
	for name, c := range bad {
		_, flags := x509Agent("bad-"+name, c)
		if name == "wrong-pair" {
			_, otherKey := db1.Write(t, pki, "db1-again")
			flags[len(flags)-1] = otherKey
			if msg := run(name, flags); !strings.Contains(msg, "private key does not match the certificate") {
				t.Errorf("%s: %s", name, msg)
			}
			continue
		}
		if msg := run(name, flags); !strings.Contains(msg, "no identity issued: the x509pop credential is not trusted") {
			t.Errorf("%s: unclear refusal:\n%s", name, msg)
		}
	}
	for _, name := range []string{"sshold", "sshuser"} {
		if msg := run(name, sshFlags(name)); !strings.Contains(msg, "no identity issued: the sshpop credential is not trusted") {
			t.Errorf("%s: unclear refusal:\n%s", name, msg)
		}
	}
	if got := e.agentIDs(); !slices.Equal(got, want) {
		t.Fatalf("refused credentials changed the agents: %v, want %v", got, want)
	}
	for _, line := range []string{"the node certificate lacks the digitalSignature key usage", "certificate signed by unknown authority", "certificate has expired", "user certificate, not a host certificate", "ssh: cert has expired"} {
		if !strings.Contains(e.server.log.String(), line) {
			t.Errorf("server log does not say %q", line)
		}
	}

	// A node alias for the web hosts.
	e.server.admin("entry", "create", "--node", "--spiffe-id", "spiffe://example.org/cluster/web", "--selector", "x509pop:subject:ou:web")
	e.entry("spiffe://example.org/frontend", "spiffe://example.org/cluster/web")
	waitSVIDs(t, a1, []string{"spiffe://example.org/frontend"})
	waitSVIDs(t, a2, []string{"spiffe://example.org/frontend"})
	waitSVIDs(t, a3, nil)
	waitSVIDs(t, s1, nil)
	var aliases []struct {
		ID string `json:"id"`
	}
	e.server.adminJSON(&aliases, "entry", "list", "--spiffe-id", "spiffe://example.org/cluster/web")
	if len(aliases) != 1 {
		t.Fatalf("alias entries: %+v", aliases)
	}
	start := time.Now()
	e.server.admin("entry", "update", "--id", aliases[0].ID, "--selector", "x509pop:subject:ou:db")
	waitSVIDs(t, a3, []string{"spiffe://example.org/frontend"})
	waitSVIDs(t, a1, nil)
	waitSVIDs(t, a2, nil)
	t.Logf("workloads followed the alias's selectors in %v (CLI, sync and Workload API polls included)", time.Since(start))

	// web1 loses its SVID and restarts: it attests again by itself, as
	// the same agent.
	a1.stop()
	if err := os.Remove(filepath.Join(d1, "agent_state.json")); err != nil {
		t.Fatal(err)
	}
	a1 = startAgentWith(t, e.addr, d1, e.bundle, nil, f1...)
	if !strings.Contains(a1.log.String(), "agent attested") {
		t.Error("restarted agent did not attest")
	}
	if got := e.agentIDs(); !slices.Equal(got, want) {
		t.Fatalf("agents after re-attestation %v, want %v", got, want)
	}

	// An evicted x509pop agent attests again by itself (banning is what
	// keeps one out).
	before := strings.Count(a2.log.String(), `msg="agent attested"`)
	e.server.admin("agent", "evict", "--spiffe-id", x509popID(web2.Cert))
	deadline := time.Now().Add(15 * time.Second)
	for strings.Count(a2.log.String(), `msg="agent attested"`) == before || !slices.Contains(e.agentIDs(), x509popID(web2.Cert)) {
		if time.Now().After(deadline) {
			t.Fatalf("evicted agent did not attest again:\n%s", tail(a2.log.String(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
	a2.waitHealthy(true, 10*time.Second)

	// A banned agent stays banned: it is refused at once and its
	// re-attestations are refused too.
	e.server.admin("agent", "ban", "--spiffe-id", x509popID(db1.Cert))
	a3.waitHealthy(false, 10*time.Second)
	deadline = time.Now().Add(10 * time.Second)
	for !refusedReattestation(a3.log.String()) {
		if time.Now().After(deadline) {
			t.Fatalf("banned agent's re-attestation not refused:\n%s", tail(a3.log.String(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if a3.healthy() {
		t.Error("banned agent healthy again")
	}
}

// TestIntegrationX509popOutageLongerThanTTL: an x509pop agent whose SVID
// expired while the server was down attests again by itself once the
// server is back, where a join-token agent would need a new token.
func TestIntegrationX509popOutageLongerThanTTL(t *testing.T) {
	dir := shortTempDir(t)
	now := time.Now()
	ca := nodepki.NewCA(t, "org CA", now)
	bundle := filepath.Join(dir, "org-ca.pem")
	nodepki.WriteBundle(t, bundle, ca)
	certFile, keyFile := ca.Issue(t, nodepki.Node{CN: "web1"}, now).Write(t, dir, "web1")
	const ttl = 5 * time.Second
	args := []string{"--x509pop-ca-bundle", bundle, "--default-x509-svid-ttl", ttl.String()}
	s := startServer(t, filepath.Join(dir, "server"), args...)
	addr := s.nodeAddress()
	trust := filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(trust, []byte(s.admin("bundle", "show")), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startAgentWith(t, addr, filepath.Join(dir, "a"), trust, nil, "--node-attestor", "x509pop", "--x509pop-cert", certFile, "--x509pop-key", keyFile)
	s.stop()
	a.waitHealthy(false, 3*ttl)
	deadline := time.Now().Add(3 * ttl)
	for !strings.Contains(a.log.String(), "agent SVID expired; attesting again") {
		if time.Now().After(deadline) {
			t.Fatalf("agent did not notice its SVID expired:\n%s", tail(a.log.String(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
	startServer(t, filepath.Join(dir, "server"), append(args, "--bind-address", addr)...)
	start := time.Now()
	a.waitHealthy(true, 60*time.Second)
	t.Logf("agent attested again %v after the server came back", time.Since(start))
	if strings.Count(a.log.String(), `msg="agent attested"`) != 2 {
		t.Errorf("agent attested %d times, want 2", strings.Count(a.log.String(), `msg="agent attested"`))
	}
}

// refusedReattestation reports whether an agent log holds a refused
// x509pop re-attestation of a banned agent.
func refusedReattestation(log string) bool {
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, `msg="re-attestation failed"`) && strings.Contains(line, `error="x509pop attestation refused`) && strings.Contains(line, "agent is banned") {
			return true
		}
	}
	return false
}
