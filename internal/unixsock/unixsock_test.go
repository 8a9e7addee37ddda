package unixsock_test

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"writ.dev/writ/internal/testuser"
	"writ.dev/writ/internal/unixsock"
)

// publicOpts are the Workload API's options: the strictest directory
// rules apply to every caller alike.
var publicOpts = unixsock.Options{Mode: 0o777, DirMode: 0o755}

// tempDir returns a new short directory (sun_path is short).
func tempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "us")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// listenBriefly listens at path, runs whileListening, closes, and checks
// that the socket is gone.
func listenBriefly(t *testing.T, path string, opts unixsock.Options, whileListening func(*unixsock.Listener)) error {
	t.Helper()
	l, err := unixsock.Listen(path, opts)
	if err != nil {
		return err
	}
	if whileListening != nil {
		whileListening(l)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
	return nil
}

// staleSocket leaves a socket nobody listens on at path.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
}

func TestCheckPath(t *testing.T) {
	for _, tc := range []struct {
		name, path string
		ok         bool
	}{
		{"empty", "", false},
		{"abstract", "@writ", false},
		{"NUL", "/tmp/a\x00b", false},
		{"too long", "/" + strings.Repeat("s", unixsock.MaxPathLen), false},
		{"longest", "/" + strings.Repeat("s", unixsock.MaxPathLen-1), true},
		{"relative", "s", true},
		{"dot-dot", "/run/writ/l/../s", false},
		{"relative dot-dot", "../s", false},
		{"dots in a name", "/run/writ/..s/a..", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := unixsock.CheckPath(tc.path)
			if (err == nil) != tc.ok || (err != nil && !errors.Is(err, unixsock.ErrPath)) {
				t.Fatalf("CheckPath: %v, want ok %v", err, tc.ok)
			}
		})
	}
	// Listen checks the length before creating anything.
	dir := tempDir(t)
	long := filepath.Join(dir, strings.Repeat("d", 60), strings.Repeat("s", 60))
	_, err := unixsock.Listen(long, publicOpts)
	if !errors.Is(err, unixsock.ErrPath) || !strings.Contains(err.Error(), "longer than the 103") {
		t.Fatalf("long path: %v", err)
	}
	if _, err := os.Lstat(filepath.Dir(long)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("directory created for a path that cannot be used: %v", err)
	}
}

func TestModes(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	for _, tc := range []struct {
		name          string
		opts          unixsock.Options
		mode, dirMode fs.FileMode
	}{
		{"public", publicOpts, 0o777, 0o755},
		{"admin", unixsock.Options{Mode: 0o666, DirMode: 0o700}, 0o666, 0o700},
		{"owner only", unixsock.Options{Mode: 0o600, DirMode: 0o700}, 0o600, 0o700},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(tempDir(t), "a", "b", "s")
			err := listenBriefly(t, path, tc.opts, func(*unixsock.Listener) {
				fi, err := os.Lstat(path)
				if err != nil || fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != tc.mode {
					t.Errorf("socket %v, %v; want mode %v", fi.Mode(), err, tc.mode)
				}
				for _, d := range []string{filepath.Dir(path), filepath.Dir(filepath.Dir(path))} {
					di, err := os.Stat(d)
					if err != nil || di.Mode().Perm() != tc.dirMode {
						t.Errorf("directory %s %v, %v; want %v", d, di.Mode(), err, tc.dirMode)
					}
				}
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("missing directory without DirMode", func(t *testing.T) {
		path := filepath.Join(tempDir(t), "missing", "s")
		if _, err := unixsock.Listen(path, unixsock.Options{Mode: 0o600}); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("got %v, want ErrNotExist", err)
		}
	})
	t.Run("no mode", func(t *testing.T) {
		if _, err := unixsock.Listen(filepath.Join(tempDir(t), "s"), unixsock.Options{}); err == nil {
			t.Fatal("listened without a mode")
		}
	})
}

func TestStaleAndLive(t *testing.T) {
	t.Run("stale socket replaced", func(t *testing.T) {
		path := filepath.Join(tempDir(t), "s")
		staleSocket(t, path)
		if err := listenBriefly(t, path, publicOpts, nil); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("live socket refused", func(t *testing.T) {
		path := filepath.Join(tempDir(t), "s")
		l, err := unixsock.Listen(path, publicOpts)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if _, err := unixsock.Listen(path, publicOpts); !errors.Is(err, unixsock.ErrInUse) {
			t.Fatalf("got %v, want ErrInUse", err)
		}
		if _, err := os.Lstat(path); err != nil {
			t.Errorf("the live socket was removed: %v", err)
		}
	})
	t.Run("close leaves a replacement alone", func(t *testing.T) {
		path := filepath.Join(tempDir(t), "s")
		l, err := unixsock.Listen(path, publicOpts)
		if err != nil {
			t.Fatal(err)
		}
		// Someone (this user) replaced the socket with another file.
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte("keep"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != "keep" {
			t.Errorf("replacement changed: %q %v", b, err)
		}
	})
}

func TestRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, path string)
		check func(t *testing.T, path string)
	}{
		{
			name: "symlink to a file",
			setup: func(t *testing.T, path string) {
				target := filepath.Join(filepath.Dir(path), "target")
				if err := os.WriteFile(target, []byte("keep"), 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(target, path); err != nil {
					t.Fatal(err)
				}
			},
			check: func(t *testing.T, path string) {
				if b, err := os.ReadFile(filepath.Join(filepath.Dir(path), "target")); err != nil || string(b) != "keep" {
					t.Errorf("target changed: %q %v", b, err)
				}
				if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != fs.ModeSymlink {
					t.Errorf("link changed: %v", err)
				}
			},
		},
		{
			name: "dangling symlink",
			setup: func(t *testing.T, path string) {
				if err := os.Symlink(filepath.Join(filepath.Dir(path), "nowhere"), path); err != nil {
					t.Fatal(err)
				}
			},
			check: func(t *testing.T, path string) {
				if _, err := os.Lstat(filepath.Join(filepath.Dir(path), "nowhere")); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("created through the link: %v", err)
				}
			},
		},
		{
			name: "symlink to a stale socket",
			setup: func(t *testing.T, path string) {
				target := filepath.Join(filepath.Dir(path), "real")
				l, err := net.ListenUnix("unix", &net.UnixAddr{Name: target, Net: "unix"})
				if err != nil {
					t.Fatal(err)
				}
				l.SetUnlinkOnClose(false)
				l.Close()
				if err := os.Symlink(target, path); err != nil {
					t.Fatal(err)
				}
			},
			check: func(t *testing.T, path string) {
				if _, err := os.Lstat(filepath.Join(filepath.Dir(path), "real")); err != nil {
					t.Errorf("link target removed: %v", err)
				}
			},
		},
		{
			name: "regular file",
			setup: func(t *testing.T, path string) {
				if err := os.WriteFile(path, []byte("keep"), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			check: func(t *testing.T, path string) {
				if b, err := os.ReadFile(path); err != nil || string(b) != "keep" {
					t.Errorf("file changed: %q %v", b, err)
				}
			},
		},
		{
			name: "directory",
			setup: func(t *testing.T, path string) {
				if err := os.Mkdir(path, 0o755); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "directory writable by others",
			setup: func(t *testing.T, path string) {
				if err := os.Chmod(filepath.Dir(path), 0o777); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "group-writable directory",
			setup: func(t *testing.T, path string) {
				if err := os.Chmod(filepath.Dir(path), 0o775); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "parent is a file",
			setup: func(t *testing.T, path string) {
				if err := os.Remove(filepath.Dir(path)); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Dir(path), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			},
		},
	} {
		t.Run(tc.name+" refused", func(t *testing.T) {
			path := filepath.Join(tempDir(t), "d", "s")
			if err := os.Mkdir(filepath.Dir(path), 0o700); err != nil {
				t.Fatal(err)
			}
			tc.setup(t, path)
			err := listenBriefly(t, path, publicOpts, nil)
			if !errors.Is(err, unixsock.ErrPath) {
				t.Fatalf("got %v, want ErrSocketPath", err)
			}
			t.Log(err)
			if tc.check != nil {
				tc.check(t, path)
			}
		})
	}
	t.Run("world-writable ancestor refused, nothing created", func(t *testing.T) {
		open := filepath.Join(tempDir(t), "open")
		if err := os.Mkdir(open, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(open, 0o777); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(open, "a", "b", "s")
		if err := listenBriefly(t, path, publicOpts, nil); !errors.Is(err, unixsock.ErrPath) {
			t.Fatalf("got %v", err)
		}
		if _, err := os.Lstat(filepath.Join(open, "a")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("created under an untrusted directory: %v", err)
		}
	})
	t.Run("symlinked directory", func(t *testing.T) {
		dir := tempDir(t)
		real := filepath.Join(dir, "real")
		if err := os.Mkdir(real, 0o755); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(dir, "link")
		if err := os.Symlink(real, link); err != nil {
			t.Fatal(err)
		}
		// A link of this user to a trusted directory is fine.
		if err := listenBriefly(t, filepath.Join(link, "s"), publicOpts, nil); err != nil {
			t.Fatal(err)
		}
		// A link into an untrusted directory is not.
		open := filepath.Join(dir, "open")
		if err := os.Mkdir(open, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(open, 0o777); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(filepath.Join(open, "d"), 0o755); err != nil {
			t.Fatal(err)
		}
		link2 := filepath.Join(dir, "link2")
		if err := os.Symlink(filepath.Join(open, "d"), link2); err != nil {
			t.Fatal(err)
		}
		if err := listenBriefly(t, filepath.Join(link2, "s"), publicOpts, nil); !errors.Is(err, unixsock.ErrPath) {
			t.Fatalf("link into a world-writable directory: %v", err)
		}
	})
	t.Run("sticky world-writable directory accepted", func(t *testing.T) {
		dir := tempDir(t)
		if err := os.Chmod(dir, 0o777|fs.ModeSticky); err != nil {
			t.Fatal(err)
		}
		if err := listenBriefly(t, filepath.Join(dir, "s"), publicOpts, nil); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("other users' socket or directory refused", func(t *testing.T) {
		uid, gid := testuser.Lookup(t)
		dir := tempDir(t)
		path := filepath.Join(dir, "s")
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		l.SetUnlinkOnClose(false)
		l.Close()
		if err := os.Lchown(path, int(uid), int(gid)); err != nil {
			t.Fatal(err)
		}
		if err := listenBriefly(t, path, publicOpts, nil); !errors.Is(err, unixsock.ErrPath) || !strings.Contains(err.Error(), "owned by uid") {
			t.Fatalf("socket of another user: %v", err)
		}
		sub := filepath.Join(dir, "theirs")
		if err := os.Mkdir(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(sub, int(uid), int(gid)); err != nil {
			t.Fatal(err)
		}
		if err := listenBriefly(t, filepath.Join(sub, "s"), publicOpts, nil); !errors.Is(err, unixsock.ErrPath) {
			t.Fatalf("directory of another user: %v", err)
		}
		// A symbolic link of another user, even to a trusted directory:
		// they could point it elsewhere.
		mine := filepath.Join(dir, "mine")
		if err := os.Mkdir(mine, 0o755); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(dir, "their-link")
		if err := os.Symlink(mine, link); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(link, int(uid), int(gid)); err != nil {
			t.Fatal(err)
		}
		if err := listenBriefly(t, filepath.Join(link, "s"), publicOpts, nil); !errors.Is(err, unixsock.ErrPath) {
			t.Fatalf("link of another user: %v", err)
		}
		// A link of this user through that link: the chain is checked at
		// every hop, not only at its ends.
		chain := filepath.Join(dir, "my-link")
		if err := os.Symlink(link, chain); err != nil {
			t.Fatal(err)
		}
		if err := listenBriefly(t, filepath.Join(chain, "s"), publicOpts, nil); !errors.Is(err, unixsock.ErrPath) || !strings.Contains(err.Error(), link+" is a symbolic link owned by uid") {
			t.Fatalf("link through a link of another user: %v", err)
		}
	})
}

// TestCheckDial: a socket another user set up first, at a path in a
// sticky world-writable directory like /tmp, is refused; one in
// directories of this user or root is accepted.
func TestCheckDial(t *testing.T) {
	uid, gid := testuser.Lookup(t)
	// base stands for /tmp: root's, sticky and world-writable.
	base := filepath.Join(tempDir(t), "tmp")
	if err := os.Mkdir(base, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o777|fs.ModeSticky); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "agent", "public")
	path := filepath.Join(dir, "api.sock")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// chown sets owners as if uid had made these: it may then do anything
	// with them, mode bits notwithstanding.
	chown := func(uid, gid uint32, paths ...string) {
		t.Helper()
		for _, p := range paths {
			if err := os.Lchown(p, int(uid), int(gid)); err != nil {
				t.Fatal(err)
			}
		}
	}
	agentDir := filepath.Dir(dir)
	for _, tc := range []struct {
		name   string
		setup  func()
		ok     bool
		naming string // a path the error must name
	}{
		{"root's", func() {}, true, ""},
		{"other user's directory", func() { chown(uid, gid, agentDir) }, false, agentDir},
		{"other user's directories and socket", func() { chown(uid, gid, agentDir, dir, path) }, false, agentDir},
		{"other user's socket", func() { chown(uid, gid, path) }, false, path},
		{"group-writable directory", func() {
			if err := os.Chmod(dir, 0o775); err != nil {
				t.Fatal(err)
			}
		}, false, dir},
		{"symlink of another user", func() {
			if err := os.Rename(path, path+".real"); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(path+".real", path); err != nil {
				t.Fatal(err)
			}
			chown(uid, gid, path)
		}, false, path},
		{"root's symlink through another user's symlink", func() {
			// path -> path.link (theirs, in the sticky base) -> path.real:
			// they could point path.link at a socket of their own.
			if err := os.Rename(path, path+".real"); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(path+".real", filepath.Join(base, "theirs")); err != nil {
				t.Fatal(err)
			}
			chown(uid, gid, filepath.Join(base, "theirs"))
			if err := os.Symlink(filepath.Join(base, "theirs"), path); err != nil {
				t.Fatal(err)
			}
		}, false, filepath.Join(base, "theirs")},
		{"root's symlink to root's socket", func() {
			if err := os.Rename(path, path+".real"); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(path+".real", path); err != nil {
				t.Fatal(err)
			}
		}, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.setup()
			t.Cleanup(func() {
				os.Remove(filepath.Join(base, "theirs"))
				chown(0, 0, agentDir, dir)
				if err := os.Chmod(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if _, err := os.Lstat(path + ".real"); err == nil {
					if err := os.Rename(path+".real", path); err != nil {
						t.Fatal(err)
					}
				}
				chown(0, 0, path)
			})
			err := unixsock.CheckDial(path)
			if tc.ok {
				if err != nil {
					t.Fatalf("CheckDial: %v", err)
				}
				return
			}
			if !errors.Is(err, unixsock.ErrPath) {
				t.Fatalf("CheckDial: %v, want ErrPath", err)
			}
			if !strings.Contains(err.Error(), tc.naming+" ") || (tc.name != "group-writable directory" && !strings.Contains(err.Error(), fmt.Sprintf("uid %d", uid))) {
				t.Errorf("error %q does not name %s and its owner", err, tc.naming)
			}
		})
	}
	t.Run("missing", func(t *testing.T) {
		if err := unixsock.CheckDial(filepath.Join(dir, "none")); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("CheckDial: %v, want ErrNotExist", err)
		}
	})
	t.Run("not a socket", func(t *testing.T) {
		f := filepath.Join(dir, "file")
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := unixsock.CheckDial(f); !errors.Is(err, unixsock.ErrPath) {
			t.Fatalf("CheckDial: %v, want ErrPath", err)
		}
	})
}
