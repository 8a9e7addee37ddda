package workloadapi

import (
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"writ.dev/writ/internal/unixsock"
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
const MaxSocketPathLen = unixsock.MaxPathLen

var (
	// ErrSocketPath: the socket path cannot be used safely: too long, not
	// a file system path, in a directory other users can write to, or
	// occupied by something that is not a stale socket of this user.
	ErrSocketPath = unixsock.ErrPath
	// ErrSocketInUse: another server is accepting connections on the
	// socket path.
	ErrSocketInUse = unixsock.ErrInUse
)

// CheckSocketPath reports whether path can be a socket path: not empty,
// not a Linux abstract socket ("@..."), without NUL bytes, and at most
// MaxSocketPathLen bytes.
func CheckSocketPath(path string) error {
	return unixsock.CheckPath(path)
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

// listen creates the socket at path with internal/unixsock's rules
// (trusted directory, created 0755 if missing so that workloads of every
// user can reach it; stale socket removed) and opens it to every user
// (mode 0777): access is decided per call, by attestation.
func listen(path string, log *slog.Logger) (*unixsock.Listener, error) {
	l, err := unixsock.Listen(path, unixsock.Options{Mode: 0o777, DirMode: 0o755})
	if err != nil {
		return nil, fmt.Errorf("workloadapi: %w", err)
	}
	dir := filepath.Dir(path)
	if fi, err := os.Stat(dir); err == nil && fi.Mode().Perm()&0o001 == 0 {
		log.Warn("the Workload API socket's directory cannot be searched by other users: only workloads of its owner or group can connect",
			"dir", dir, "mode", fmt.Sprintf("%04o", fi.Mode().Perm()))
	}
	return l, nil
}
