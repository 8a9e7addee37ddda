//go:build linux

package sdsv3_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"

	"writ.dev/writ/internal/passconn"
	"writ.dev/writ/internal/pidns"
	"writ.dev/writ/internal/testuser"
	"writ.dev/writ/workloadapi/sdsv3"
)

// The test binary doubles as the process that connects to the socket:
// started with envChild set, TestMain runs childMain instead of the
// tests.
const (
	envChild = "SDSV3_TEST_CHILD" // socket path to connect to
	envUID   = "SDSV3_TEST_UID"   // ids to switch to on 'u'
	envGID   = "SDSV3_TEST_GID"
)

func TestMain(m *testing.M) {
	pidns.HoldIfAsked()
	if path := os.Getenv(envChild); path != "" {
		os.Exit(childMain(path))
	}
	os.Exit(m.Run())
}

// childMain connects to the socket at path and passes the connection to
// the parent over fd 3 (SCM_RIGHTS), once the server has pinned this
// process. Then it obeys one-byte commands on fd 3: 'x' exit; 'e'
// execute /bin/sh, which writes 'e' and waits for fd 3 to close; 'u'
// switch to envUID and envGID, then write 'u'.
func childMain(path string) int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "sdsv3 child:", err)
		return 2
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		return fail(err)
	}
	// Passed once the server has pinned this process.
	if err := passconn.Send(3, c.(*net.UnixConn)); err != nil {
		return fail(err)
	}
	ctl := os.NewFile(3, "ctl")
	b := make([]byte, 1)
	for {
		if _, err := ctl.Read(b); err != nil {
			return 0
		}
		switch b[0] {
		case 'x':
			return 0
		case 'e':
			return fail(syscall.Exec("/bin/sh", []string{"sh", "-c", "printf e >&3; read x <&3"}, os.Environ()))
		case 'u':
			uid, err1 := strconv.Atoi(os.Getenv(envUID))
			gid, err2 := strconv.Atoi(os.Getenv(envGID))
			if err := errors.Join(err1, err2); err != nil {
				return fail(err)
			}
			if err := syscall.Setgroups([]int{gid}); err != nil {
				return fail(err)
			}
			if err := syscall.Setresgid(gid, gid, gid); err != nil {
				return fail(err)
			}
			if err := syscall.Setresuid(uid, uid, uid); err != nil {
				return fail(err)
			}
			if _, err := ctl.Write([]byte{'u'}); err != nil {
				return fail(err)
			}
		}
	}
}

// pinned is a child process that connected to the socket and handed its
// connection to the test, as a process can: calls on the connection are
// attested as the child's.
type pinned struct {
	cmd    *exec.Cmd
	ctl    *net.UnixConn
	done   chan error // the child's exit
	client secretv3.SecretDiscoveryServiceClient
}

func (e *env) pinnedChild(env ...string) *pinned {
	t := e.t
	t.Helper()
	ctl, theirs, err := passconn.Pair()
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := &pinned{cmd: exec.Command(self), ctl: ctl, done: make(chan error, 1)}
	p.cmd.Env = append(append(os.Environ(), envChild+"="+strings.TrimPrefix(e.addr, "unix://")), env...)
	p.cmd.ExtraFiles = []*os.File{theirs}
	p.cmd.Stderr = os.Stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		ctl.Close() // the child, or the shell it became, exits
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			t.Error("child did not exit")
			_ = p.cmd.Process.Kill()
		}
	})

	conn, err := passconn.Receive(ctl, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := passconn.Client(conn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	p.client = secretv3.NewSecretDiscoveryServiceClient(cc)
	return p
}

// do sends cmd to the child and waits for reply.
func (p *pinned) do(t *testing.T, cmd, reply byte) {
	t.Helper()
	if _, err := p.ctl.Write([]byte{cmd}); err != nil {
		t.Fatal(err)
	}
	if err := p.ctl.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := p.ctl.Read(b); err != nil || b[0] != reply {
		t.Fatalf("child answered %q, %v; want %q", b, err, reply)
	}
}

// exit makes the child exit and waits until it has been reaped.
func (p *pinned) exit(t *testing.T) {
	t.Helper()
	if _, err := p.ctl.Write([]byte{'x'}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("child: %v", err)
		}
		p.done <- nil // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("child did not exit")
	}
}

// TestStreamSendsNothingToAChangedCaller: once the process that
// connected has exited (and another process, with the same uid and
// executable, has taken its PID), executed another program or switched to
// another uid, an open stream sends nothing more on that connection,
// neither for a request nor for a change, and ends with PermissionDenied.
func TestStreamSendsNothingToAChangedCaller(t *testing.T) {
	changes := []struct {
		name string
		// pidns: the case runs in a PID namespace of its own (pidns.Enter).
		pidns bool
		env   func(t *testing.T) []string
		do    func(t *testing.T, p *pinned)
	}{
		{name: "exited", do: func(t *testing.T, p *pinned) { p.exit(t) }},
		{name: "exited, PID reused", pidns: true, do: func(t *testing.T, p *pinned) {
			p.exit(t)
			pidns.StartImpostor(t, p.cmd.Process.Pid)
		}},
		{name: "executed another program", do: func(t *testing.T, p *pinned) { p.do(t, 'e', 'e') }},
		{name: "switched uid", env: func(t *testing.T) []string {
			uid, gid := testuser.Lookup(t)
			return []string{fmt.Sprint(envUID, "=", uid), fmt.Sprint(envGID, "=", gid)}
		}, do: func(t *testing.T, p *pinned) { p.do(t, 'u', 'u') }},
	}
	triggers := []struct {
		name string
		// next makes the server answer the stream: by a request after r1
		// was received, or by a change of the secrets asked for.
		// rotate signs a new SVID for the caller's entry.
		next func(s *stream, r1 *discoveryv3.DiscoveryResponse, rotate func())
	}{
		{name: "request for other names", next: func(s *stream, r1 *discoveryv3.DiscoveryResponse, _ func()) {
			s.ack(r1, "default", "ROOTCA")
		}},
		{name: "rotation", next: func(s *stream, r1 *discoveryv3.DiscoveryResponse, rotate func()) {
			s.ack(r1, "default")
			rotate()
		}},
	}
	for _, c := range changes {
		for _, tr := range triggers {
			t.Run(c.name+"/"+tr.name, func(t *testing.T) {
				if c.pidns && !pidns.Enter(t) {
					return
				}
				var env []string
				if c.env != nil {
					env = c.env(t)
				}
				e := newEnv(t, sdsv3.Config{})
				a := e.add("/svc/a")
				p := e.pinnedChild(env...)
				s := e.streamOn(ctxTimeout(t), p.client)
				s.send(&discoveryv3.DiscoveryRequest{Node: envoyNode(40), ResourceNames: []string{"default"}})
				r1 := s.next() // the stream attested the child while it lived
				if got := secrets(t, r1); len(got) != 1 || got["default"] == nil {
					t.Fatalf("first response holds %v, want default", keys(got))
				}

				c.do(t, p)
				tr.next(s, r1, func() { e.sign(a) })
				r := s.nextResult()
				if r.resp != nil {
					t.Fatalf("the stream sent %d secrets (with the private key) after the caller %s", len(r.resp.GetResources()), c.name)
				}
				if grpcstatus.Code(r.err) != codes.PermissionDenied {
					t.Fatalf("StreamSecrets after the caller %s: %v, want PermissionDenied", c.name, r.err)
				}
				// A new call on the connection is refused too.
				_, err := p.client.FetchSecrets(ctxTimeout(t), &discoveryv3.DiscoveryRequest{TypeUrl: sdsv3.SecretTypeURL, ResourceNames: []string{"default"}})
				if grpcstatus.Code(err) != codes.PermissionDenied {
					t.Fatalf("FetchSecrets after the caller %s: %v, want PermissionDenied", c.name, err)
				}
			})
		}
	}
}
