package server

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"writ.dev/writ/internal/unixsock"
)

func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "cs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestListenUnix: the admin socket follows internal/unixsock's rules: a
// running server's socket is never taken over, a directory other users
// can write to is refused, and the socket is created 0666 in a 0700
// directory.
func TestListenUnix(t *testing.T) {
	t.Run("live socket refused and left alone", func(t *testing.T) {
		path := filepath.Join(shortDir(t), "admin.sock")
		live, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		before, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		l, err := listenUnix(path)
		if err == nil {
			l.Close()
			t.Fatal("listened on the socket of a running server")
		}
		if !errors.Is(err, unixsock.ErrInUse) {
			t.Errorf("got %v, want ErrInUse", err)
		}
		after, err := os.Lstat(path)
		if err != nil || !os.SameFile(before, after) {
			t.Fatalf("the running server's socket was replaced: %v", err)
		}
	})
	t.Run("world-writable directory refused", func(t *testing.T) {
		dir := filepath.Join(shortDir(t), "open")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		l, err := listenUnix(filepath.Join(dir, "admin.sock"))
		if err == nil {
			l.Close()
			t.Fatal("listened in a directory every user can write to")
		}
		if !errors.Is(err, unixsock.ErrPath) {
			t.Errorf("got %v, want ErrPath", err)
		}
	})
	t.Run("modes", func(t *testing.T) {
		old := syscall.Umask(0o077)
		defer syscall.Umask(old)
		path := filepath.Join(shortDir(t), "d", "admin.sock")
		l, err := listenUnix(path)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(path)
		if err != nil || fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o666 {
			t.Errorf("socket %v, %v", fi.Mode(), err)
		}
		if di, err := os.Stat(filepath.Dir(path)); err != nil || di.Mode().Perm() != 0o700 {
			t.Errorf("directory %v, %v", di.Mode(), err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("socket left behind: %v", err)
		}
	})
}
