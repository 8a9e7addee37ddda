package integration_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/internal/testuser"
)

// loggedField returns the value of key in the server's "server ready"
// log record.
func (p *serverProc) loggedField(key string) string {
	p.t.Helper()
	for _, line := range strings.Split(p.log.String(), "\n") {
		if !strings.Contains(line, `msg="server ready"`) {
			continue
		}
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, key+"="); ok {
				return v
			}
		}
	}
	p.t.Fatalf("server logged no %s:\n%s", key, tail(p.log.String(), 20))
	return ""
}

// writAs runs the writ binary as uid/gid (the test's own if uid is
// root) with env added, and returns stdout, stderr and the exit code.
func writAs(t *testing.T, uid, gid uint32, env []string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, writBin, args...)
	cmd.Env = append(cleanEnv(), env...)
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run writ %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// TestIntegrationRemoteAdmin runs the admin API over mTLS with real
// processes: a server with --admin-bind-address and an --admin-id, an
// agent, and CLIs that take their SVIDs from the agent, as root (an
// admin entry) and as a second uid (an ordinary entry, then an
// --admin-id). Deleting the admin entry refuses the very next call, a
// client without a certificate is refused at the handshake, and the
// audit log names the remote callers.
func TestIntegrationRemoteAdmin(t *testing.T) {
	testuser.RequireRoot(t)
	uid, gid := testuser.Lookup(t)
	const (
		agentID  = "spiffe://example.org/writ/agent/a"
		rootID   = "spiffe://example.org/ops/root"
		webID    = "spiffe://example.org/web"
		deployID = "spiffe://example.org/ci/deploy"
	)
	e := newNodeEnv(t, "--admin-bind-address", "127.0.0.1:0", "--admin-id", deployID)
	addr := e.server.loggedField("admin_address")
	a := startAgent(t, e.addr, filepath.Join(e.dir, "a"), e.bundle, e.token(agentID))
	// The second uid reaches the binary and the agent's socket.
	for _, d := range []string{filepath.Dir(writBin), e.dir} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	userSel := "unix:uid:" + strconv.Itoa(int(uid))

	// root's SVID comes from two entries with one SPIFFE ID: one admin,
	// one not (more selectors), so that root keeps the SVID when the admin
	// entry is deleted and only the server's check can refuse it.
	adminEntry := e.entry(rootID, agentID, "--admin")
	e.entry(rootID, agentID, "--selector", "unix:gid:0")
	webEntry := strings.TrimSpace(e.server.admin("entry", "create", "--spiffe-id", webID, "--parent-id", agentID, "--selector", userSel))
	waitSVIDs(t, a, []string{rootID, rootID})
	waitFetchAs(t, a, uid, gid, []string{webID})

	remote := []string{"--admin-address", addr, "--socket-path", a.socket}
	asRoot := func(args ...string) (string, string, int) {
		return writAs(t, 0, 0, nil, append(args, remote...)...)
	}
	asUser := func(args ...string) (string, string, int) {
		return writAs(t, uid, gid, nil, append(args, remote...)...)
	}

	// An admin SVID lists and creates entries; the audit log names it.
	out, errOut, code := asRoot("entry", "list", "--output", "json")
	if code != 0 || !strings.Contains(out, webEntry) {
		t.Fatalf("remote entry list as admin: exit %d %q %q", code, out, errOut)
	}
	out, errOut, code = writAs(t, 0, 0, []string{"WRIT_ADMIN_ADDRESS=" + addr, "SPIFFE_ENDPOINT_SOCKET=unix://" + a.socket},
		"entry", "create", "--spiffe-id", "spiffe://example.org/created", "--parent-id", agentID, "--selector", "unix:uid:4242")
	if code != 0 {
		t.Fatalf("remote entry create as admin (from the environment): exit %d %q %q", code, out, errOut)
	}
	if !strings.Contains(e.server.admin("entry", "list", "--spiffe-id", "spiffe://example.org/created"), strings.TrimSpace(out)) {
		t.Fatalf("entry %q created remotely is not listed locally", out)
	}
	if !strings.Contains(e.server.log.String(), "caller_spiffe_id="+rootID) {
		t.Errorf("audit log does not name the remote caller:\n%s", tail(e.server.log.String(), 20))
	}

	// --admin-spiffe-id chooses the SVID, and says which there are.
	if out, errOut, code := asRoot("entry", "show", "--id", webEntry, "--admin-spiffe-id", rootID); code != 0 || !strings.Contains(out, webID) {
		t.Fatalf("remote entry show with --admin-spiffe-id: exit %d %q %q", code, out, errOut)
	}
	if _, errOut, code := asRoot("entry", "list", "--admin-spiffe-id", deployID); code != 1 || !strings.Contains(errOut, "has no X.509-SVID of that ID, only "+rootID) {
		t.Fatalf("remote entry list with another --admin-spiffe-id: exit %d %q", code, errOut)
	}

	// A backup (the CA's private keys) is for the local socket only.
	if _, errOut, code := asRoot("server", "backup", "--file", "-"); code != 1 || !strings.Contains(errOut, "local admin socket only") {
		t.Fatalf("remote backup as admin: exit %d %q", code, errOut)
	}

	// An ordinary SVID is refused.
	_, errOut, code = asUser("entry", "list")
	if code != 1 || !strings.Contains(errOut, "refused "+webID+": permission denied") {
		t.Fatalf("remote entry list with an ordinary SVID: exit %d %q", code, errOut)
	}
	if !strings.Contains(e.server.log.String(), "caller_spiffe_id="+webID) || !strings.Contains(e.server.log.String(), "code=PermissionDenied") {
		t.Errorf("refusal not logged with the caller's SPIFFE ID")
	}

	// Deleting the admin entry (remotely, by the admin itself) refuses
	// the next call, with the same SVID.
	if out, errOut, code := asRoot("entry", "delete", "--id", adminEntry); code != 0 {
		t.Fatalf("remote entry delete: exit %d %q %q", code, out, errOut)
	}
	_, errOut, code = asRoot("entry", "list")
	if code != 1 || !strings.Contains(errOut, "refused "+rootID+": permission denied") {
		t.Fatalf("remote call after the admin entry was deleted: exit %d %q", code, errOut)
	}

	// An --admin-id needs no admin entry.
	e.server.admin("entry", "delete", "--id", webEntry)
	deployEntry := strings.TrimSpace(e.server.admin("entry", "create", "--spiffe-id", deployID, "--parent-id", agentID, "--selector", userSel))
	waitFetchAs(t, a, uid, gid, []string{deployID})
	if out, errOut, code := asUser("entry", "list", "--spiffe-id", rootID); code != 0 || !strings.Contains(out, rootID) {
		t.Fatalf("remote entry list as --admin-id: exit %d %q %q", code, out, errOut)
	}

	// Without an SVID the CLI says so, naming the agent's answer.
	e.server.admin("entry", "delete", "--id", deployEntry)
	waitFetchAs(t, a, uid, gid, nil)
	if _, errOut, code := asUser("entry", "list"); code != 1 || !strings.Contains(errOut, "--admin-address needs this process's X.509-SVID: the agent refused this process") {
		t.Fatalf("remote entry list without an SVID: exit %d %q", code, errOut)
	}

	// No client certificate: the handshake is refused.
	bundlePEM, err := os.ReadFile(e.bundle)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	for rest := bundlePEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		roots.AddCert(c)
	}
	conn, err := tls.Dial("tcp", addr, &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{"h2"},
		// The server's SVID has no DNS name; check its chain only.
		InsecureSkipVerify: true, //nolint:gosec // verified below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			_, err = leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			return err
		},
	})
	if err == nil {
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	// crypto/tls reports the peer's alert only in its message.
	if err == nil || !strings.Contains(err.Error(), "tls: certificate required") {
		t.Fatalf("connection without a client certificate: %v, want the certificate_required alert", err)
	}
}

// TestIntegrationRemoteAdminTaint: an admin connection whose SVID was
// signed by a CA that is then tainted is refused on its next calls, while
// the CLI, given a re-signed SVID by the agent, goes on.
func TestIntegrationRemoteAdminTaint(t *testing.T) {
	const (
		agentID = "spiffe://example.org/writ/agent/a"
		rootID  = "spiffe://example.org/ops/root"
	)
	e := newNodeEnv(t, "--admin-bind-address", "127.0.0.1:0")
	addr := e.server.loggedField("admin_address")
	a := startAgent(t, e.addr, filepath.Join(e.dir, "a"), e.bundle, e.token(agentID))
	e.entry(rootID, agentID, "--admin")
	waitSVIDs(t, a, []string{rootID})

	old := fetchSVID(t, a)
	bundle, err := x509bundle.Load(spiffeid.RequireTrustDomainFromString("example.org"), e.bundle)
	if err != nil {
		t.Fatal(err)
	}
	conf := tlsconfig.MTLSClientConfig(old, bundle, tlsconfig.AuthorizeID(spiffeid.RequireFromString("spiffe://example.org/writ/server")))
	conf.MinVersion = tls.VersionTLS13
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	entries := adminv1.NewEntryServiceClient(conn)
	list := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := entries.GetEntry(ctx, &adminv1.GetEntryRequest{Id: "00000000-0000-4000-8000-000000000000"})
		return err
	}
	if err := list(); status.Code(err) != codes.NotFound {
		t.Fatalf("call before the taint: %v, want NotFound (authorized)", err)
	}

	e.server.admin("ca", "rotate", "--wait")
	e.server.admin("ca", "x509", "taint", "--id", hex.EncodeToString(old.Certificates[0].AuthorityKeyId))
	deadline := time.Now().Add(10 * time.Second)
	for err := list(); status.Code(err) != codes.Unauthenticated; err = list() {
		if time.Now().After(deadline) {
			t.Fatalf("calls with an SVID of the tainted CA: %v, want Unauthenticated", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The agent re-signs the SVID; the CLI takes the new one.
	deadline = time.Now().Add(20 * time.Second)
	for {
		_, errOut, code := runWrit(t, nil, "entry", "list", "--admin-address", addr, "--socket-path", a.socket)
		if code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("remote entry list after the re-signing: %s", errOut)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
