package integration_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var uidSelector = "unix:uid:" + strconv.Itoa(os.Getuid())

func (e *nodeEnv) entry(id, parent string, extra ...string) string {
	args := append([]string{"entry", "create", "--spiffe-id", id, "--parent-id", parent, "--selector", uidSelector}, extra...)
	return strings.TrimSpace(e.server.admin(args...))
}

func socketAddr(p *agentProc) workloadapi.ClientOption {
	return workloadapi.WithAddr("unix://" + p.socket)
}

// svidIDs returns the SPIFFE IDs the agent's Workload API gives this
// process, waiting until it gives want (or failing).
func waitSVIDs(t *testing.T, p *agentProc, want []string) {
	t.Helper()
	waitSVIDsWithin(t, p, want, 20*time.Second)
}

// waitSVIDsWithin is waitSVIDs with its own time limit.
func waitSVIDsWithin(t *testing.T, p *agentProc, want []string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	var got []string
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		svids, err := workloadapi.FetchX509SVIDs(ctx, socketAddr(p))
		cancel()
		got = nil
		for _, s := range svids {
			got = append(got, s.ID.String())
		}
		slices.Sort(got)
		if err == nil && slices.Equal(got, want) {
			return
		}
		if len(want) == 0 && status.Code(err) == codes.PermissionDenied {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("agent %s serves %v, want %v", p.dataDir, got, want)
}

// TestIntegrationWorkloadAPI runs go-spiffe's unmodified client against
// real agents: each agent serves exactly its own entries' SVIDs, the
// written chain verifies with openssl, JWT-SVIDs fetch and validate, and
// two processes with different identities talk mTLS while a third
// identity is refused.
func TestIntegrationWorkloadAPI(t *testing.T) {
	e := newNodeEnv(t)
	a := startAgent(t, e.addr, filepath.Join(e.dir, "a"), e.bundle, e.token("spiffe://example.org/writ/agent/a"))
	b := startAgent(t, e.addr, filepath.Join(e.dir, "b"), e.bundle, e.token("spiffe://example.org/writ/agent/b"))
	c := startAgent(t, e.addr, filepath.Join(e.dir, "c"), e.bundle, e.token("spiffe://example.org/writ/agent/c"))
	e.entry("spiffe://example.org/web", "spiffe://example.org/writ/agent/a", "--dns-name", "web.example.org")
	dbID := e.entry("spiffe://example.org/db", "spiffe://example.org/writ/agent/b")
	e.entry("spiffe://example.org/intruder", "spiffe://example.org/writ/agent/c")
	waitSVIDs(t, a, []string{"spiffe://example.org/web"})
	waitSVIDs(t, b, []string{"spiffe://example.org/db"})
	waitSVIDs(t, c, []string{"spiffe://example.org/intruder"})

	// The written files verify with openssl.
	out := filepath.Join(e.dir, "out")
	if _, errOut, code := runWrit(t, nil, "svid", "fetch", "--write", out, "--socket-path", a.socket); code != 0 {
		t.Fatalf("svid fetch --write: %s", errOut)
	}
	if fi, err := os.Stat(filepath.Join(out, "svid_key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("svid_key.pem: %v %v", fi, err)
	}
	verify := exec.Command("openssl", "verify", "-CAfile", filepath.Join(out, "bundle.pem"), "-untrusted", filepath.Join(out, "svid.pem"), filepath.Join(out, "svid.pem"))
	if b, err := verify.CombinedOutput(); err != nil {
		t.Fatalf("openssl verify: %v\n%s", err, b)
	}
	// SPIFFE_ENDPOINT_SOCKET is understood.
	cmd := exec.Command(writBin, "svid", "fetch", "--output", "json")
	cmd.Env = append(cleanEnv(), "SPIFFE_ENDPOINT_SOCKET=unix://"+b.socket)
	if o, err := cmd.Output(); err != nil || !strings.Contains(string(o), "spiffe://example.org/db") {
		t.Fatalf("svid fetch via SPIFFE_ENDPOINT_SOCKET: %v %s", err, o)
	}

	// JWT-SVIDs: fetch, validate through the agent and locally.
	tok, errOut, code := runWrit(t, nil, "jwt", "fetch", "--audience", "api", "--socket-path", a.socket)
	tok = strings.TrimSpace(tok)
	if code != 0 || tok == "" {
		t.Fatalf("jwt fetch: %d %s", code, errOut)
	}
	if o, errOut, code := runWrit(t, nil, "jwt", "validate", "--audience", "api", "--token", tok, "--socket-path", b.socket); code != 0 || !strings.Contains(o, "spiffe://example.org/web") {
		t.Fatalf("jwt validate: %d %s %s", code, o, errOut)
	}
	if _, _, code := runWrit(t, nil, "jwt", "validate", "--audience", "other", "--token", tok, "--socket-path", b.socket); code == 0 {
		t.Fatal("jwt validate accepted the wrong audience")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bundles, err := workloadapi.FetchJWTBundles(ctx, socketAddr(b))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(tok, bundles, []string{"api"}); err != nil {
		t.Fatalf("go-spiffe rejects the JWT-SVID: %v", err)
	}

	// mTLS: this process serves as web and admits only db; a child
	// process dials as db, another as intruder.
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(socketAddr(a)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	lis, err := spiffetls.ListenWithMode(ctx, "tcp", "127.0.0.1:0",
		spiffetls.MTLSServerWithSource(tlsconfig.AuthorizeID(spiffeid.RequireFromString("spiffe://example.org/db")), src))
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				line, err := bufio.NewReader(conn).ReadString('\n')
				if err == nil {
					fmt.Fprintf(conn, "hello %s", line)
				}
			}()
		}
	}()
	dial := func(p *agentProc) (string, error) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestMTLSClientHelper$")
		cmd.Env = append(os.Environ(), "WRIT_MTLS_ADDR="+lis.Addr().String(), "WRIT_MTLS_SOCKET="+p.socket)
		o, err := cmd.CombinedOutput()
		return string(o), err
	}
	if o, err := dial(b); err != nil || !strings.Contains(o, "hello spiffe://example.org/db") {
		t.Fatalf("db could not call web over mTLS: %v\n%s", err, o)
	}
	if o, err := dial(c); err == nil {
		t.Fatalf("intruder was admitted:\n%s", o)
	}

	// Deleting the entry removes the SVID from the agent's answers.
	e.server.admin("entry", "delete", "--id", dbID)
	waitSVIDs(t, b, nil)
}

// TestMTLSClientHelper is the client process of TestIntegrationWorkloadAPI.
func TestMTLSClientHelper(t *testing.T) {
	addr := os.Getenv("WRIT_MTLS_ADDR")
	if addr == "" {
		t.Skip("helper process only")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+os.Getenv("WRIT_MTLS_SOCKET"))))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	svid, _ := src.GetX509SVID()
	conn, err := spiffetls.DialWithMode(ctx, "tcp", addr, spiffetls.MTLSClientWithSource(tlsconfig.AuthorizeID(spiffeid.RequireFromString("spiffe://example.org/web")), src))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "%s\n", svid.ID)
	reply, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil && reply == "" {
		t.Fatalf("no reply: %v", err)
	}
	fmt.Println(reply)
}

// TestIntegrationAgentRestartDuringOutage: an agent restarted while its
// server is down tells workloads to retry (Unavailable), not that they
// have no identity, and serves them once the server is back.
func TestIntegrationAgentRestartDuringOutage(t *testing.T) {
	e := newNodeEnv(t)
	a := startAgent(t, e.addr, filepath.Join(e.dir, "a"), e.bundle, e.token("spiffe://example.org/writ/agent/a"))
	e.entry("spiffe://example.org/web", "spiffe://example.org/writ/agent/a")
	waitSVIDs(t, a, []string{"spiffe://example.org/web"})
	e.server.stop()
	a.stop()

	a = launchAgent(t, e.addr, a.dataDir, e.bundle, "")
	waitUntil(t, "the restarted agent's Workload API listening", 20*time.Second, func() bool {
		return strings.Contains(a.log.String(), "Workload API listening")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err := workloadapi.FetchX509SVID(ctx, socketAddr(a))
	cancel()
	if code := status.Code(err); code != codes.Unavailable {
		t.Fatalf("before the agent has its entries: %v, want Unavailable", err)
	}

	e.server = startServer(t, e.server.dataDir, "--bind-address", e.addr)
	waitSVIDsWithin(t, a, []string{"spiffe://example.org/web"}, 45*time.Second)
	if strings.Contains(a.log.String(), "agent attested") {
		t.Fatal("the restarted agent attested again")
	}
}

// TestIntegrationServerOutage stops the server for longer than the
// workload SVIDs live: the agent serves them while valid, never after
// they expire, and rotation resumes by itself when the server returns.
func TestIntegrationServerOutage(t *testing.T) {
	e := newNodeEnv(t, "--default-x509-svid-ttl", "60s")
	a := startAgent(t, e.addr, filepath.Join(e.dir, "a"), e.bundle, e.token("spiffe://example.org/writ/agent/a"))
	e.entry("spiffe://example.org/short", "spiffe://example.org/writ/agent/a", "--x509-ttl", "8s")
	waitSVIDs(t, a, []string{"spiffe://example.org/short"})
	// An 8s SVID is renewed about every 4s, not in a loop (the server
	// backdates NotBefore by more than the TTL).
	time.Sleep(3 * time.Second)
	if n := strings.Count(e.server.log.String(), `msg="X.509-SVIDs signed"`); n > 3 {
		t.Fatalf("%d signings of one 8s SVID within about 3s: the agent re-signs in a loop", n)
	}

	e.server.stop()
	stopped := time.Now()
	sawValid := false
	for time.Since(stopped) < 12*time.Second {
		// An SVID that expired before the call was sent was certainly
		// served expired; one that expires while the call is under way
		// may have been served valid (the agent checks at its own now).
		sent := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		svids, err := workloadapi.FetchX509SVIDs(ctx, socketAddr(a))
		cancel()
		for _, s := range svids {
			if !sent.Before(s.Certificates[0].NotAfter) {
				t.Fatalf("agent served an SVID that had expired %s before the call", sent.Sub(s.Certificates[0].NotAfter))
			}
			sawValid = true
		}
		// Once the SVID has expired the agent has nothing to give: it
		// refuses, or holds the stream open until a fresh SVID arrives.
		if code := status.Code(err); err != nil && code != codes.PermissionDenied && code != codes.DeadlineExceeded {
			t.Fatalf("fetch during outage: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !sawValid {
		t.Fatal("agent served nothing during the outage, even while the SVID was valid")
	}
	if !a.healthy() {
		t.Fatal("agent unhealthy during the outage while its own SVID is valid")
	}

	// Back on the same address: rotation resumes without a restart, at
	// the agent's next connection attempt, which after this many
	// failures may be up to 30 s away (agent.ReconnectBackoff.Max).
	e.server = startServer(t, e.server.dataDir, "--bind-address", e.addr, "--default-x509-svid-ttl", "60s")
	waitSVIDsWithin(t, a, []string{"spiffe://example.org/short"}, 45*time.Second)
	t.Logf("agent log:\n%s", tail(a.log.String(), 5))
}
