package datadir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

const lockName = "writ.lock"

var (
	// ErrInUse means another process holds the directory's lock.
	ErrInUse = errors.New("data directory in use")
	// ErrPermissions means a directory or file is open to other users,
	// owned by another user, or not of the expected type.
	ErrPermissions = errors.New("unsafe permissions")
)

// Dir is an open, locked data directory.
type Dir struct {
	path string
	lock *os.File
}

// Open creates path (mode 0700) if it does not exist, checks that it is a
// directory owned by this user with no group or other access, and locks
// it.
func Open(path string) (*Dir, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("data directory %s: %w", path, err)
	}
	if err := MkdirPrivate(abs); err != nil {
		return nil, err
	}
	lockPath := filepath.Join(abs, lockName)
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder := readPID(f)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is locked by another writ process%s; stop it or choose another --data-dir", ErrInUse, abs, holder)
		}
		return nil, fmt.Errorf("lock %s: %w", lockPath, err)
	}
	if err := CheckFile(lockPath); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &Dir{path: abs, lock: f}, nil
}

func readPID(f *os.File) string {
	b := make([]byte, 16)
	n, _ := f.ReadAt(b, 0)
	pid := strings.TrimSpace(string(b[:n]))
	if _, err := strconv.Atoi(pid); err != nil {
		return ""
	}
	return " (pid " + pid + ")"
}

// Path returns the directory's absolute path.
func (d *Dir) Path() string { return d.path }

// Join returns the path of name inside the directory.
func (d *Dir) Join(name ...string) string {
	return filepath.Join(append([]string{d.path}, name...)...)
}

// Close releases the lock. It is safe to call more than once.
func (d *Dir) Close() error {
	if d.lock == nil {
		return nil
	}
	err := d.lock.Close()
	d.lock = nil
	return err
}

// MkdirPrivate creates dir (and missing parents) with mode 0700 whatever
// the umask, and checks an existing dir with CheckDir.
func MkdirPrivate(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create directory: %w", err)
	}
	return CheckDir(dir)
}

// CheckDir reports an error wrapping ErrPermissions unless dir is a
// directory (not a symbolic link) owned by this user with no group or
// other permissions.
func CheckDir(dir string) error {
	return check(dir, true)
}

// CheckFile reports an error wrapping ErrPermissions unless path is a
// regular file (not a symbolic link) owned by this user with no group or
// other permissions.
func CheckFile(path string) error {
	return check(path, false)
}

func check(path string, wantDir bool) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	kind, fix := "file", "chmod 600"
	if wantDir {
		kind, fix = "directory", "chmod 700"
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("%w: %s %s is a symbolic link", ErrPermissions, kind, path)
	case wantDir && !fi.IsDir(), !wantDir && !fi.Mode().IsRegular():
		return fmt.Errorf("%w: %s is not a %s", ErrPermissions, path, kind)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%w: %s %s is owned by uid %d, not by this user (uid %d)", ErrPermissions, kind, path, st.Uid, os.Geteuid())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%w: %s %s has mode %04o, open to other users; run: %s %s", ErrPermissions, kind, path, perm, fix, path)
	}
	return nil
}

// WriteFile writes data to path with mode 0600 atomically: readers see the
// old content or the new, never a mix, and the new content survives a
// crash once WriteFile returns.
func WriteFile(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName) // no-op once renamed
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmpName, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return SyncDir(dir)
}

// SyncDir flushes a directory's entries (new, renamed or removed files)
// to disk.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// ReadFile reads a file after checking it with CheckFile.
func ReadFile(path string) ([]byte, error) {
	if err := CheckFile(path); err != nil {
		return nil, err
	}
	return os.ReadFile(path)
}
