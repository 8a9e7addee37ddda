package svidfiles

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"writ.dev/writ/internal/datadir"
)

// The X.509 files change together: each generation of them is written
// into a directory of its own in the certificate directory, and one
// rename of a symbolic link makes it current. The paths users configure
// are symbolic links through that one:
//
//	svid.pem           -> .writ-x509/svid.pem
//	.writ-x509         -> .writ-x509.123456  (the current generation)
//	.writ-x509-previous -> .writ-x509.987654 (kept for readers opening it)
//
// A reader opening svid.pem and svid_key.pem sees one generation or the
// next, never the key of one and the certificate of another unless a
// switch falls between its two opens; a crash at any step leaves the
// previous complete set or the new one.
const (
	currentLink  = ".writ-x509"
	previousLink = ".writ-x509-previous"
	genPrefix    = ".writ-x509."
	// tmpLinkPrefix names a symbolic link being made, before it is
	// renamed into place.
	tmpLinkPrefix = ".writ-link."
	// reservedPrefix: configured file names may not start with it.
	reservedPrefix = ".writ-"
)

// Steps of writeSet a fault hook is called before.
const (
	stepGenerationWritten = "generation written" // before the previous link is set
	stepPreviousLinked    = "previous linked"    // before the switch
	stepSwitched          = "switched"           // before the per-file links
	stepLinked            = "linked"             // before old generations are removed
)

// ErrNotOurs: a path in the certificate directory is in the way, such
// as a directory where a file or link goes.
var ErrNotOurs = errors.New("svidfiles: a path in the certificate directory is not one of Writ's")

// writeSet makes files, together, the current X.509 files of dir; it
// reports whether anything changed. fault, if not nil, is called before
// each step, and an error from it stops writeSet there as a crash would
// (nothing is cleaned up).
func writeSet(dir string, files []file, fault func(step string) error) (bool, error) {
	cur := genTarget(dir, currentLink)
	if cur != "" && setIs(dir, cur, files) {
		return false, removeOldGenerations(dir)
	}
	step := func(s string) error {
		if fault == nil {
			return nil
		}
		return fault(s)
	}

	gen, err := os.MkdirTemp(dir, genPrefix)
	if err != nil {
		return false, fmt.Errorf("write the X.509 files: %w", err)
	}
	// Only this uid writes into it; readers get what each file's mode
	// allows, as in the certificate directory itself.
	if err := os.Chmod(gen, 0o755); err != nil {
		return false, fmt.Errorf("write the X.509 files: %w", err)
	}
	for _, f := range files {
		if err := createFile(filepath.Join(gen, f.name), f.data, f.mode); err != nil {
			return false, err
		}
	}
	if err := datadir.SyncDir(gen); err != nil {
		return false, err
	}
	if err := step(stepGenerationWritten); err != nil {
		return false, err
	}
	if cur != "" {
		if err := replaceLink(dir, previousLink, cur); err != nil {
			return false, err
		}
	}
	if err := step(stepPreviousLinked); err != nil {
		return false, err
	}
	if err := replaceLink(dir, currentLink, filepath.Base(gen)); err != nil {
		return false, err
	}
	if err := datadir.SyncDir(dir); err != nil {
		return true, err
	}
	if err := step(stepSwitched); err != nil {
		return true, err
	}
	for _, f := range files {
		target := currentLink + "/" + f.name
		if t, err := os.Readlink(filepath.Join(dir, f.name)); err == nil && t == target {
			continue
		}
		if err := replaceLink(dir, f.name, target); err != nil {
			return true, err
		}
	}
	if err := datadir.SyncDir(dir); err != nil {
		return true, err
	}
	if err := step(stepLinked); err != nil {
		return true, err
	}
	return true, removeOldGenerations(dir)
}

// genTarget returns the generation directory name the link name in dir
// points to, or "" if it is not such a link.
func genTarget(dir, name string) string {
	t, err := os.Readlink(filepath.Join(dir, name))
	if err != nil || !isGenName(t) {
		return ""
	}
	return t
}

func isGenName(name string) bool {
	return strings.HasPrefix(name, genPrefix) && len(name) > len(genPrefix) && !strings.ContainsRune(name, '/')
}

// setIs reports whether generation gen of dir, a directory of this uid,
// holds exactly files, with their modes, and each file's path in dir
// links to it.
func setIs(dir, gen string, files []file) bool {
	if fi, err := os.Lstat(filepath.Join(dir, gen)); err != nil || !fi.IsDir() || !ownedByMe(fi) {
		return false
	}
	entries, err := os.ReadDir(filepath.Join(dir, gen))
	if err != nil || len(entries) != len(files) {
		return false
	}
	for _, f := range files {
		if t, err := os.Readlink(filepath.Join(dir, f.name)); err != nil || t != currentLink+"/"+f.name {
			return false
		}
		p := filepath.Join(dir, gen, f.name)
		fi, err := os.Lstat(p)
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != f.mode {
			return false
		}
		if old, err := os.ReadFile(p); err != nil || !bytes.Equal(old, f.data) {
			return false
		}
	}
	return true
}

// createFile creates path, which must not exist (a link placed there is
// not followed), with data and mode perm; it is 0600 until written.
func createFile(path string, data []byte, perm fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// replaceLink makes dir/name a symbolic link to target with one rename:
// whatever was at dir/name (a file, a link) is replaced, never followed.
func replaceLink(dir, name, target string) error {
	tmp := filepath.Join(dir, tmpLinkPrefix+name)
	if fi, err := os.Lstat(tmp); err == nil {
		// Left by a crash: ours to remove if it is a link.
		if fi.Mode()&fs.ModeSymlink == 0 {
			return fmt.Errorf("%w: %s", ErrNotOurs, tmp)
		}
		if err := os.Remove(tmp); err != nil {
			return fmt.Errorf("link %s: %w", name, err)
		}
	}
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("link %s: %w", name, err)
	}
	return nil
}

// removeOldGenerations removes the generation directories of dir other
// than the current and the previous one: only directories so named,
// owned by this uid.
func removeOldGenerations(dir string) error {
	keep := []string{genTarget(dir, currentLink), genTarget(dir, previousLink)}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list %s: %w", dir, err)
	}
	for _, e := range entries {
		name := e.Name()
		if !isGenName(name) || slices.Contains(keep, name) || !e.IsDir() {
			continue
		}
		if fi, err := e.Info(); err != nil || !ownedByMe(fi) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("remove an old generation of the X.509 files: %w", err)
		}
	}
	return nil
}

// ownedByMe reports whether fi is owned by this process's effective uid.
func ownedByMe(fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == os.Geteuid()
}
