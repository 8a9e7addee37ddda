package unixsock

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// MaxPathLen is the longest socket path accepted: sun_path holds 104
// bytes with the terminating NUL on the BSDs and macOS (108 on Linux),
// and clients on any of them must be able to dial it.
const MaxPathLen = 103

var (
	// ErrPath: the socket path cannot be used safely: too long, not a
	// file system path, in a directory other users can change, or
	// occupied by something that is not a stale socket of this user.
	ErrPath = errors.New("unusable socket path")
	// ErrInUse: a server is accepting connections on the socket path.
	ErrInUse = errors.New("socket path is in use by a running server")
)

// pathError is an ErrPath whose message stands alone (a CLI shows it as
// is).
type pathError struct{ msg string }

func (e *pathError) Error() string        { return e.msg }
func (e *pathError) Is(target error) bool { return target == ErrPath }

func pathErrorf(format string, args ...any) error {
	return &pathError{msg: fmt.Sprintf(format, args...)}
}

// CheckPath reports an error wrapping ErrPath unless path can be a socket
// path: not empty, not a Linux abstract socket ("@..."), without NUL
// bytes or ".." components, and at most MaxPathLen bytes. ".." is
// refused because the kernel applies it after following the symbolic
// link before it, while a path cleaned as text drops both: the path
// checked and the path bound or dialed would differ.
func CheckPath(path string) error {
	switch {
	case slices.Contains(strings.Split(path, "/"), ".."):
		return pathErrorf("socket path %s contains \"..\"; give the path without it", path)
	case path == "":
		return pathErrorf("the socket path is empty")
	case strings.HasPrefix(path, "@"):
		return pathErrorf("%q is an abstract socket name; a file system path is needed", path)
	case strings.IndexByte(path, 0) >= 0:
		return pathErrorf("%q contains a NUL byte", path)
	case len(path) > MaxPathLen:
		return pathErrorf("socket path %s is %d bytes, longer than the %d a Unix socket address holds; choose a shorter path", path, len(path), MaxPathLen)
	}
	return nil
}

// Options says how Listen creates the socket.
type Options struct {
	// Mode is the socket file's permission bits (required): 0o600 for
	// its owner only, 0o666 or 0o777 when access is decided per call.
	Mode fs.FileMode
	// DirMode, if not zero, is the mode of the socket's directory and
	// its missing parents, which Listen then creates. Zero means the
	// directory must exist.
	DirMode fs.FileMode
}

// Listener is a listening Unix socket and the file it created. Close
// closes it and removes the file if it is still the one Listen created.
type Listener struct {
	*net.UnixListener
	path     string
	dev, ino uint64

	once     sync.Once
	closeErr error
}

// Listen creates a Unix socket at path under the rules of the package
// documentation and listens on it.
func Listen(path string, opts Options) (*Listener, error) {
	if err := CheckPath(path); err != nil {
		return nil, err
	}
	if opts.Mode == 0 || opts.Mode&^fs.ModePerm != 0 || opts.DirMode&^fs.ModePerm != 0 {
		return nil, fmt.Errorf("unixsock: invalid modes %v, %v", opts.Mode, opts.DirMode)
	}
	if err := prepareDir(filepath.Dir(path), opts.DirMode); err != nil {
		return nil, err
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// Close removes the file itself, only if it is still the one made.
	ul.SetUnlinkOnClose(false)
	l := &Listener{UnixListener: ul, path: path}
	fi, err := os.Lstat(path)
	if err == nil && fi.Mode().Type() != fs.ModeSocket {
		err = fmt.Errorf("%w: %s was replaced while it was created", ErrPath, path)
	}
	if err == nil {
		st := fi.Sys().(*syscall.Stat_t)
		l.dev, l.ino = uint64(st.Dev), uint64(st.Ino)
		// The directory is writable only by this user (or root), so the
		// file cannot have been swapped since Lstat.
		err = os.Chmod(path, opts.Mode)
	}
	if err != nil {
		ul.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	return l, nil
}

// Path returns the socket's path.
func (l *Listener) Path() string { return l.path }

// Close closes the listener and removes the socket file if it is still
// the one Listen created. It may be called more than once (a gRPC server
// closes its listener too); later calls return the first one's result.
func (l *Listener) Close() error {
	l.once.Do(func() {
		err := l.UnixListener.Close()
		if errors.Is(err, net.ErrClosed) {
			err = nil
		}
		l.closeErr = errors.Join(err, l.remove())
	})
	return l.closeErr
}

func (l *Listener) remove() error {
	fi, err := os.Lstat(l.path)
	if err != nil {
		return nil
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Type() != fs.ModeSocket || uint64(st.Dev) != l.dev || uint64(st.Ino) != l.ino {
		return nil
	}
	if err := os.Remove(l.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove socket %s: %w", l.path, err)
	}
	return nil
}

// prepareDir checks that no other user can change what dir names, and,
// with dirMode, creates its missing part with that mode and checks the
// whole of it again.
func prepareDir(dir string, dirMode fs.FileMode) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	existing := abs
	for {
		_, err := os.Lstat(existing)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("socket directory: %w", err)
		}
		existing = filepath.Dir(existing)
	}
	if err := checkTrusted(existing); err != nil {
		return err
	}
	if existing != abs {
		if dirMode == 0 {
			return fmt.Errorf("socket directory %s: %w", abs, fs.ErrNotExist)
		}
		if err := os.MkdirAll(abs, dirMode); err != nil {
			return fmt.Errorf("create socket directory: %w", err)
		}
		// Whatever the umask.
		for d := abs; d != existing; d = filepath.Dir(d) {
			if err := os.Chmod(d, dirMode); err != nil {
				return fmt.Errorf("socket directory: %w", err)
			}
		}
	}
	return checkTrusted(abs)
}

// checkTrusted reports an error wrapping ErrPath unless no other user can
// change what the directory path names (see resolveTrusted).
func checkTrusted(path string) error {
	dir, fi, err := resolveTrusted(path)
	if err != nil {
		return err
	}
	return checkDir(dir, fi)
}

// checkDir reports an error wrapping ErrPath unless fi, found at path, is
// a directory no other user can add files to or remove them from: not
// writable by group or others, or sticky.
func checkDir(path string, fi fs.FileInfo) error {
	if !fi.IsDir() {
		return fmt.Errorf("%w: %s is not a directory", ErrPath, path)
	}
	if mode := fi.Mode(); mode.Perm()&0o022 != 0 && mode&fs.ModeSticky == 0 {
		return fmt.Errorf("%w: directory %s (mode %04o) is writable by other users, who could replace the socket; make it 0755 or stricter", ErrPath, path, mode.Perm())
	}
	return nil
}

// maxLinks bounds the symbolic links followed in resolving one path, as
// the kernel does (ELOOP).
const maxLinks = 40

// resolveTrusted resolves path as the kernel would, one component and one
// symbolic link at a time, and reports an error wrapping ErrPath unless
// no other user can change what it names: every directory passed
// through, from "/" down, is owned by this user or root and not writable
// by group or others unless it is sticky (like /tmp, where others cannot
// remove or rename this user's files); every symbolic link met, at any
// hop of a chain, is owned by this user or root. It returns the resolved
// path and what is there, which it leaves to the caller to check (it is
// not a symbolic link).
func resolveTrusted(path string) (string, fs.FileInfo, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", nil, fmt.Errorf("socket path: %w", err)
	}
	euid := uint32(os.Geteuid())
	cur := "/"
	fi, err := os.Lstat(cur)
	if err != nil {
		return "", nil, fmt.Errorf("socket directory: %w", err)
	}
	rest := strings.Split(abs, "/")
	for links := 0; ; {
		// cur is a directory (or, at the end, whatever path names).
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != euid && st.Uid != 0 {
			return "", nil, fmt.Errorf("%w: %s is owned by uid %d, who could replace the socket; only this user or root may own it and the directories above it", ErrPath, cur, st.Uid)
		}
		for len(rest) > 0 && (rest[0] == "" || rest[0] == ".") {
			rest = rest[1:]
		}
		if len(rest) == 0 {
			return cur, fi, nil
		}
		if err := checkDir(cur, fi); err != nil {
			return "", nil, err
		}
		name := rest[0]
		rest = rest[1:]
		next := filepath.Dir(cur)
		if name != ".." {
			next = filepath.Join(cur, name)
		}
		if fi, err = os.Lstat(next); err != nil {
			return "", nil, fmt.Errorf("socket path: %w", err)
		}
		if fi.Mode().Type() != fs.ModeSymlink {
			cur = next
			continue
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != euid && st.Uid != 0 {
			return "", nil, fmt.Errorf("%w: %s is a symbolic link owned by uid %d, who could point it elsewhere; only this user or root may own it", ErrPath, next, st.Uid)
		}
		if links++; links > maxLinks {
			return "", nil, fmt.Errorf("%w: %s: too many levels of symbolic links", ErrPath, path)
		}
		target, err := os.Readlink(next)
		if err != nil {
			return "", nil, fmt.Errorf("socket path: %w", err)
		}
		if filepath.IsAbs(target) {
			cur = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
		// cur, a directory already checked, is looked at again.
		if fi, err = os.Lstat(cur); err != nil {
			return "", nil, fmt.Errorf("socket directory: %w", err)
		}
	}
}

// removeStale removes a socket left at path by an earlier run. It refuses
// anything else: a symbolic link (never followed), a regular file, a
// directory, a socket of another user, or a socket some server still
// accepts connections on (ErrInUse).
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket path: %w", err)
	}
	if t := fi.Mode().Type(); t != fs.ModeSocket {
		return fmt.Errorf("%w: %s exists and is %s, not a socket; refusing to replace it", ErrPath, path, describeType(t))
	}
	st := fi.Sys().(*syscall.Stat_t)
	if euid := uint32(os.Geteuid()); st.Uid != euid {
		return fmt.Errorf("%w: %s is a socket owned by uid %d, not by this user; refusing to replace it", ErrPath, path, st.Uid)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%w: %s", ErrInUse, path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("%w: %s: cannot tell whether a server still uses it: %w", ErrInUse, path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}

func describeType(t fs.FileMode) string {
	switch {
	case t == 0:
		return "a regular file"
	case t&fs.ModeSymlink != 0:
		return "a symbolic link"
	case t&fs.ModeDir != 0:
		return "a directory"
	case t&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case t&fs.ModeDevice != 0:
		return "a device"
	}
	return "not a regular file"
}

// CheckDial reports an error unless the socket at path is one that no
// other user can have put there or can replace: the socket file and every
// symbolic link met in resolving path, at any hop of a chain, are owned
// by this user or root, and every directory passed through passes the
// rules Listen applies (owned by this user or root, not writable by group
// or others unless sticky, like /tmp). A client calls it before dialing a
// socket path the user did not name, such as a default in a
// world-writable /tmp, where any local user could otherwise have created
// the directory first and serve the socket themselves.
//
// A rule broken gives an error wrapping ErrPath that names the path and
// its owner; a missing socket or directory one wrapping fs.ErrNotExist.
// Once CheckDial has accepted path, only this user or root can change
// what it names, so dialing it afterwards is safe.
func CheckDial(path string) error {
	if err := CheckPath(path); err != nil {
		return err
	}
	target, fi, err := resolveTrusted(path)
	if err != nil {
		return err
	}
	if t := fi.Mode().Type(); t != fs.ModeSocket {
		return fmt.Errorf("%w: %s is %s, not a socket", ErrPath, target, describeType(t))
	}
	return nil
}
