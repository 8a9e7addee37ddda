package workloadapi_test

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"

	"writ.dev/writ/workloadapi"
)

// TestFloodByUserWithoutIdentity: a uid with no identity opening more
// connections than the global cap takes at most its per-uid share, and a
// caller with an identity (this uid) keeps fetching with go-spiffe's
// client while the flood holds its connections.
func TestFloodByUserWithoutIdentity(t *testing.T) {
	uid, gid := testUser(t)
	const maxConns = 16
	// On a fake clock that stays put, refused connections are never
	// closed for idleness: only the per-uid bound keeps the flood out.
	e := newEnv(t, withFakeClock(), withPublicDir(), withConfig(func(c *workloadapi.Config) { c.MaxConnections = maxConns }))
	e.add("/mine")

	cmd := exec.Command(publicBin(t))
	cmd.Env = append(os.Environ(), envChild+"=flood", envAddr+"="+e.addr, fmt.Sprintf("%s=%d", envConns, 2*maxConns))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{gid}}, Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("flooding child: %v: %s", err, stderr.String())
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("flooding child: %v: %s", err, stderr.String())
	}
	var denied, other int
	if _, err := fmt.Sscanf(strings.TrimSpace(line), "denied %d other %d", &denied, &other); err != nil {
		t.Fatalf("flooding child printed %q: %v", line, err)
	}
	t.Logf("flooding uid %d: %d calls refused with PermissionDenied, %d connections refused", uid, denied, other)
	if max := maxConns / 8; denied > max {
		t.Errorf("the flooding uid got %d connections served, more than its share of %d", denied, max)
	}

	// The flood still holds its connections (the child waits on stdin).
	// One client, one connection: this uid's share (maxConns/8) bounds
	// its connections too, and a closed one is released only once the
	// server has seen it close.
	client, err := spiffewl.New(ctxTimeout(t, 10*time.Second), spiffewl.WithAddr(e.addr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	for i := range 3 {
		svid, err := client.FetchX509SVID(ctxTimeout(t, 10*time.Second))
		if err != nil {
			t.Fatalf("fetch %d during the flood: %v", i, err)
		}
		if got := svid.ID.String(); got != "spiffe://example.org/mine" {
			t.Fatalf("fetch %d: got %s", i, got)
		}
	}
}

// TestRefusedConnectionClosed: once a call is refused for want of
// identity, the server closes the connection when it has been idle for
// the linger (2 s on the Clock); the client's next call connects afresh,
// and is served once the caller has an entry.
func TestRefusedConnectionClosed(t *testing.T) {
	e := newEnv(t, withFakeClock())
	e.add("/someone-else", "unix:uid:4242424")
	c, conn := e.raw()
	ctx := withHeader(ctxTimeout(t, 20*time.Second))
	_, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"a"}})
	wantCode(t, err, codes.PermissionDenied)
	if s := conn.GetState(); s != connectivity.Ready {
		t.Fatalf("connection %v after the refusal, want READY until the linger passes", s)
	}
	// The close is armed before the refusal is sent.
	e.fake.Advance(2 * time.Second)
	if !conn.WaitForStateChange(ctx, connectivity.Ready) {
		t.Fatal("the refused connection was not closed")
	}
	t.Logf("connection state after the linger: %v", conn.GetState())

	// The next call on the same client gets a fresh connection.
	en := e.add("/mine")
	resp, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"a"}})
	if err != nil {
		t.Fatalf("call after the close: %v", err)
	}
	if len(resp.GetSvids()) != 1 || resp.Svids[0].GetSpiffeId() != en.SPIFFEID.String() {
		t.Fatalf("got %v", resp.GetSvids())
	}
}
