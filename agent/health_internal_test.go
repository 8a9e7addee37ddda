package agent

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"testing"

	"writ.dev/writ/internal/unixsock"
)

// TestHealthSocket: the agent's admin socket follows internal/unixsock's
// rules: a running agent's socket is never taken over, and the socket is
// 0600 and removed on stop.
func TestHealthSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "ah")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, AdminSocketName)

	live, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	before, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{adminSocket: path}
	if h, err := a.serveHealth(); err == nil {
		h.stop()
		t.Fatal("listened on the socket of a running agent")
	} else if !errors.Is(err, unixsock.ErrInUse) {
		t.Errorf("got %v, want ErrInUse", err)
	}
	if after, err := os.Lstat(path); err != nil || !os.SameFile(before, after) {
		t.Fatalf("the running agent's socket was replaced: %v", err)
	}
	live.Close()

	h, err := a.serveHealth()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { h.serve(); close(done) }()
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %v, %v", fi.Mode(), err)
	}
	h.stop()
	<-done
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
}
