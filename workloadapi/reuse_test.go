package workloadapi_test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc/codes"

	"writ.dev/writ/internal/passconn"
	"writ.dev/writ/internal/pidns"
)

// TestReusedPID: once the process that connected has exited and another
// process has taken its PID, with the same uid and executable, its
// connections answer nothing: not the next message of a stream opened
// while it lived, not a new call, whether the test or the newcomer,
// holding one of the connections, calls. The PID is reused for certain,
// in a PID namespace where the test, the server included, is PID 1.
func TestReusedPID(t *testing.T) {
	if !pidns.Enter(t) {
		return
	}
	e := newEnv(t)
	a := e.add("/a") // this uid is entitled
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}

	// The process that connects, twice, and hands both connections over.
	ctl, theirs, err := passconn.Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	first := exec.Command(self)
	first.Env = append(os.Environ(), envChild+"=passhold", envAddr+"="+e.addr)
	first.ExtraFiles = []*os.File{theirs}
	first.Stderr = os.Stderr
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	var conns [2]net.Conn
	for i := range conns {
		if conns[i], err = passconn.Receive(ctl, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}

	// While it lives, the connection is its own.
	cc, err := passconn.Client(conns[0])
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := workload.NewSpiffeWorkloadAPIClient(cc)
	ctx := withHeader(ctxTimeout(t, 30*time.Second))
	s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := s.Recv(); err != nil || len(r.GetSvids()) != 1 {
		t.Fatalf("FetchX509SVID while the process that connected lives: %d SVIDs, %v; want 1", len(r.GetSvids()), err)
	}
	if _, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"a"}}); err != nil {
		t.Fatalf("FetchJWTSVID while the process that connected lives: %v", err)
	}

	ctl.Close() // it exits
	if err := first.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
	pid := first.Process.Pid

	// The newcomer, at the same PID, with the other connection.
	f, err := conns[1].(*net.UnixConn).File()
	if err != nil {
		t.Fatal(err)
	}
	conns[1].Close()
	impostor := exec.Command(self)
	impostor.Env = append(os.Environ(), envChild+"=impostor")
	impostor.ExtraFiles = []*os.File{f}
	impostor.Stderr = os.Stderr
	stdin, err := impostor.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := impostor.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	pidns.StartAt(t, impostor, pid)
	f.Close()
	defer func() {
		stdin.Close()
		if err := impostor.Wait(); err != nil {
			t.Errorf("impostor: %v", err)
		}
	}()
	var got strings.Builder
	lines := bufio.NewScanner(stdout)
	for range 3 {
		if !lines.Scan() {
			t.Fatalf("impostor: %v, after %q", lines.Err(), got.String())
		}
		fmt.Fprintln(&got, lines.Text())
	}
	pidns.RequireLookalike(t, pid, uint32(os.Geteuid()), uint32(os.Getegid()), self)
	if want := "x509 PermissionDenied 0\njwt PermissionDenied\nbundles PermissionDenied\n"; got.String() != want {
		t.Errorf("the process that took the PID, on a connection of the one that exited, got:\n%swant\n%s", got.String(), want)
	}

	// The stream opened while the first process lived sends no more.
	e.sign(a, time.Hour)
	r, err := s.Recv()
	if r != nil {
		t.Errorf("the stream sent %d SVIDs (with their keys) after the PID was reused", len(r.GetSvids()))
	}
	wantCode(t, err, codes.PermissionDenied)
	_, err = c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"a"}})
	wantCode(t, err, codes.PermissionDenied)
}
