package workloadapi

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// pathError is an unusable socket path or address; it is ErrSocketPath
// for errors.Is, and its message stands alone (the CLI shows it as is).
type pathError struct{ msg string }

func (e *pathError) Error() string        { return e.msg }
func (e *pathError) Is(target error) bool { return target == ErrSocketPath }

func pathErrorf(format string, args ...any) error {
	return &pathError{msg: fmt.Sprintf(format, args...)}
}

// MaxSocketPathLen is the longest socket path accepted: sun_path holds
// 104 bytes with the terminating NUL on the BSDs and macOS (108 on
// Linux), and clients on any of them must be able to dial it.
const MaxSocketPathLen = 103

var (
	// ErrSocketPath: the socket path cannot be used safely: too long, not
	// a file system path, in a directory other users can write to, or
	// occupied by something that is not a stale socket of this user.
	ErrSocketPath = errors.New("workloadapi: unusable socket path")
	// ErrSocketInUse: another server is accepting connections on the
	// socket path.
	ErrSocketInUse = errors.New("workloadapi: socket path is in use by a running server")
)

// CheckSocketPath reports whether path can be a socket path: not empty,
// not a Linux abstract socket ("@..."), without NUL bytes, and at most
// MaxSocketPathLen bytes.
func CheckSocketPath(path string) error {
	switch {
	case path == "":
		return pathErrorf("the socket path is empty")
	case strings.HasPrefix(path, "@"):
		return pathErrorf("%q is an abstract socket name; the Workload API needs a file system path", path)
	case strings.IndexByte(path, 0) >= 0:
		return pathErrorf("%q contains a NUL byte", path)
	case len(path) > MaxSocketPathLen:
		return pathErrorf("socket path %s is %d bytes, longer than the %d a Unix socket address holds; choose a shorter path", path, len(path), MaxSocketPathLen)
	}
	return nil
}

// EndpointAddr returns the Workload API address of the socket at path,
// as SPIFFE_ENDPOINT_SOCKET holds it: "unix://" and the absolute path,
// escaped as a URL path where needed. ParseEndpointAddr reverses it.
func EndpointAddr(path string) (string, error) {
	if err := CheckSocketPath(path); err != nil {
		return "", err
	}
	if !filepath.IsAbs(path) {
		return "", pathErrorf("socket path %q is not absolute", path)
	}
	u := url.URL{Scheme: "unix", Path: path}
	return u.String(), nil
}

// ParseEndpointAddr returns the socket path of a Workload API address of
// the form "unix:///absolute/path" (the SPIFFE Workload Endpoint form;
// "unix:/absolute/path", the same URL without its empty authority, is
// accepted too). Percent-escapes are decoded. Other schemes (tcp), relative, opaque ("unix:path") or host
// ("unix://host/path") forms, user info, queries and fragments are
// refused: none names a local socket unambiguously.
func ParseEndpointAddr(addr string) (string, error) {
	u, err := url.Parse(addr)
	if err != nil {
		return "", pathErrorf("Workload API address %q is not a URL: %v", addr, err)
	}
	switch {
	case u.Scheme != "unix":
		return "", pathErrorf("Workload API address %q: want unix:///absolute/path", addr)
	case u.Opaque != "":
		return "", pathErrorf("Workload API address %q: the path must be absolute (unix:///absolute/path)", addr)
	case u.User != nil, u.Host != "":
		return "", pathErrorf("Workload API address %q: unexpected host (want unix:///absolute/path)", addr)
	case u.RawQuery != "" || u.ForceQuery, u.Fragment != "" || strings.Contains(addr, "#"):
		return "", pathErrorf("Workload API address %q must not have a query or fragment", addr)
	case !strings.HasPrefix(u.Path, "/"):
		return "", pathErrorf("Workload API address %q: the path must be absolute", addr)
	}
	if err := CheckSocketPath(u.Path); err != nil {
		return "", err
	}
	return u.Path, nil
}

// socket is a listening Unix socket and the file it created.
type socket struct {
	l        *net.UnixListener
	path     string
	dev, ino uint64
	log      *slog.Logger
}

// listen creates the socket at path after checking its directory and
// removing a stale socket, and opens it to every user (mode 0777):
// access is decided per call, by attestation.
func listen(path string, log *slog.Logger) (*socket, error) {
	if err := CheckSocketPath(path); err != nil {
		return nil, err
	}
	if err := prepareDir(filepath.Dir(path), log); err != nil {
		return nil, err
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("workloadapi: listen on %s: %w", path, err)
	}
	// Run removes the file itself, only if it is still the one it made.
	l.SetUnlinkOnClose(false)
	s := &socket{l: l, path: path, log: log}
	fi, err := os.Lstat(path)
	if err == nil && fi.Mode().Type() != fs.ModeSocket {
		err = fmt.Errorf("%w: %s was replaced while it was created", ErrSocketPath, path)
	}
	if err == nil {
		st := fi.Sys().(*syscall.Stat_t)
		s.dev, s.ino = uint64(st.Dev), uint64(st.Ino)
		// The directory is writable only by this user, so the file
		// cannot have been swapped since Lstat.
		err = os.Chmod(path, 0o777)
	}
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("workloadapi: socket %s: %w", path, err)
	}
	return s, nil
}

// close closes the listener (a no-op if the gRPC server did) and removes
// the socket file if it is still the one listen created.
func (s *socket) close() {
	s.l.Close()
	fi, err := os.Lstat(s.path)
	if err != nil {
		return
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Type() != fs.ModeSocket || uint64(st.Dev) != s.dev || uint64(st.Ino) != s.ino {
		return
	}
	if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("cannot remove the Workload API socket", "socket_path", s.path, "err", err)
	}
}

// prepareDir creates dir (mode 0755, so that workloads of every user can
// reach the socket) if it is missing, after checking that no other user
// can change what the part that exists names (checkTrusted), and checks
// the whole of it again once created.
func prepareDir(dir string, log *slog.Logger) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("workloadapi: socket directory: %w", err)
	}
	existing := abs
	for {
		_, err := os.Lstat(existing)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("workloadapi: socket directory: %w", err)
		}
		existing = filepath.Dir(existing)
	}
	if err := checkTrusted(existing); err != nil {
		return err
	}
	if existing != abs {
		if err := os.MkdirAll(abs, 0o755); err != nil {
			return fmt.Errorf("workloadapi: create socket directory: %w", err)
		}
		// Whatever the umask: other users' workloads must reach it.
		if err := os.Chmod(abs, 0o755); err != nil {
			return fmt.Errorf("workloadapi: socket directory: %w", err)
		}
	}
	if err := checkTrusted(abs); err != nil {
		return err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return fmt.Errorf("workloadapi: socket directory: %w", err)
	}
	if fi.Mode().Perm()&0o001 == 0 {
		log.Warn("the Workload API socket's directory cannot be searched by other users: only workloads of its owner or group can connect",
			"dir", abs, "mode", fmt.Sprintf("%04o", fi.Mode().Perm()))
	}
	return nil
}

// checkTrusted reports an error wrapping ErrSocketPath unless no other
// user can change what path names: every directory from path up to "/",
// both along path as written and along its target once symbolic links are
// resolved, is owned by this user or root and not writable by group or
// others unless it is sticky (like /tmp, where others cannot remove or
// rename this user's files); and every symbolic link met on the way is
// owned by this user or root.
func checkTrusted(path string) error {
	resolved, err := filepath.EvalSymlinks(path)
	if err != nil {
		return fmt.Errorf("workloadapi: socket directory: %w", err)
	}
	euid := uint32(os.Geteuid())
	for _, p := range []string{path, resolved} {
		for cur := p; ; cur = filepath.Dir(cur) {
			fi, err := os.Lstat(cur)
			if err != nil {
				return fmt.Errorf("workloadapi: socket directory: %w", err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			mode := fi.Mode()
			switch {
			case st.Uid != euid && st.Uid != 0:
				return fmt.Errorf("%w: %s is owned by uid %d, who could replace the socket; only this user or root may own the directories above it", ErrSocketPath, cur, st.Uid)
			case mode.Type() == fs.ModeSymlink:
			case !mode.IsDir():
				return fmt.Errorf("%w: %s is not a directory", ErrSocketPath, cur)
			case mode.Perm()&0o022 != 0 && mode&fs.ModeSticky == 0:
				return fmt.Errorf("%w: directory %s (mode %04o) is writable by other users, who could replace the socket; make it 0755", ErrSocketPath, cur, mode.Perm())
			}
			if parent := filepath.Dir(cur); parent == cur {
				break
			}
		}
	}
	return nil
}

// removeStale removes a socket left at path by an earlier run. It refuses
// anything else: a symbolic link (never followed), a regular file, a
// directory, a socket of another user, or a socket some server still
// accepts connections on (ErrSocketInUse).
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("workloadapi: socket path: %w", err)
	}
	if t := fi.Mode().Type(); t != fs.ModeSocket {
		return fmt.Errorf("%w: %s exists and is %s, not a socket; refusing to replace it", ErrSocketPath, path, describeType(t))
	}
	st := fi.Sys().(*syscall.Stat_t)
	if euid := uint32(os.Geteuid()); st.Uid != euid {
		return fmt.Errorf("%w: %s is a socket owned by uid %d, not by this user; refusing to replace it", ErrSocketPath, path, st.Uid)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%w: %s", ErrSocketInUse, path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("%w: %s: cannot tell whether a server still uses it: %v", ErrSocketInUse, path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("workloadapi: remove stale socket: %w", err)
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
