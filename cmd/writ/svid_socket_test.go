package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"

	"writ.dev/writ/internal/testuser"
	"writ.dev/writ/internal/unixsock"
)

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	n atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// TestDefaultWorkloadSocketTrust: a Workload API command dials a default
// socket only if this user or root owns it and the directories above
// it. Another user who created the directory (and socket) first at the
// default path in /tmp is refused, with an error naming the path and its
// owner, before any connection; the same socket named by the user is
// dialed, and so is the default once root owns it all.
func TestDefaultWorkloadSocketTrust(t *testing.T) {
	uid, gid := testuser.Lookup(t)
	root, err := os.MkdirTemp("", "ws")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	// tmp stands for /tmp: root's, sticky, writable by all.
	tmp := filepath.Join(root, "tmp")
	if err := os.Mkdir(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tmp, 0o777|fs.ModeSticky); err != nil {
		t.Fatal(err)
	}
	agentDir := filepath.Join(tmp, "writ-agent")
	path := filepath.Join(agentDir, "public", "api.sock")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	ul, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l := &countingListener{Listener: ul}
	srv := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(srv, workload.UnimplementedSpiffeWorkloadAPIServer{})
	go srv.Serve(l)
	t.Cleanup(srv.Stop)

	setOwner := func(uid, gid uint32) {
		t.Helper()
		for _, p := range []string{agentDir, filepath.Dir(path), path} {
			if err := os.Lchown(p, int(uid), int(gid)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// fetch makes one call, which the server answers Unimplemented.
	fetch := func(w *workloadCmd) error {
		t.Helper()
		wc, err := w.dial(t.Context())
		if err != nil {
			return err
		}
		defer wc.Close()
		ctx, cancel := wc.callContext(t.Context())
		defer cancel()
		if _, err := wc.FetchX509Context(ctx); err == nil || !strings.Contains(err.Error(), "Unimplemented") {
			t.Fatalf("FetchX509Context: %v; want the server's Unimplemented", err)
		}
		return nil
	}

	setOwner(uid, gid) // the other user made /tmp/writ-agent
	err = fetch(&workloadCmd{socket: path, checkSocket: true, timeout: 10 * time.Second})
	if !errors.Is(err, unixsock.ErrPath) {
		t.Fatalf("dial of another user's default socket: %v; want it refused", err)
	}
	for _, want := range []string{"refusing the default Workload API socket " + path, fmt.Sprintf("owned by uid %d", uid), "--socket-path", "SPIFFE_ENDPOINT_SOCKET"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if n := l.n.Load(); n != 0 {
		t.Fatalf("%d connections to the refused socket", n)
	}

	// Named by the user (--socket-path, $SPIFFE_ENDPOINT_SOCKET): dialed.
	if err := fetch(&workloadCmd{socket: path, timeout: 10 * time.Second}); err != nil {
		t.Fatalf("named socket: %v", err)
	}
	if l.n.Load() == 0 {
		t.Fatal("the named socket was not dialed")
	}

	before := l.n.Load()
	setOwner(0, 0)
	if err := fetch(&workloadCmd{socket: path, checkSocket: true, timeout: 10 * time.Second}); err != nil {
		t.Fatalf("root's default socket: %v", err)
	}
	if l.n.Load() == before {
		t.Fatal("root's default socket was not dialed")
	}

	// Missing: the usual message, with the way to name another socket.
	err = fetch(&workloadCmd{socket: filepath.Join(tmp, "none", "api.sock"), checkSocket: true, timeout: 10 * time.Second})
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "cannot connect to the Workload API socket") {
		t.Fatalf("missing default socket: %v", err)
	}
}

// TestChooseDefaultSocket: the first candidate that exists, else the
// last.
func TestChooseDefaultSocket(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	if got := chooseDefaultSocket(a, b); got != b {
		t.Errorf("none exists: %s, want %s", got, b)
	}
	if err := os.WriteFile(a, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := chooseDefaultSocket(a, b); got != a {
		t.Errorf("first exists: %s, want %s", got, a)
	}
}
