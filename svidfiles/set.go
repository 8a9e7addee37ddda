package svidfiles

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The X.509 files change together: each generation of them is written
// into a directory of its own in the certificate directory, and one
// rename of a symbolic link makes it current. The paths users configure
// are symbolic links through that one; the names of the set's links and
// directories carry a short hash of the configured file names (<id>), so
// that writers of other names sharing the directory never touch them:
//
//	svid.pem                  -> .writ-x509-<id>/svid.pem
//	.writ-x509-<id>           -> .writ-x509-<id>.<random>  (the current generation)
//	.writ-x509-<id>-previous  -> .writ-x509-<id>.<random>  (kept for readers opening it)
//
// A reader opening svid.pem and svid_key.pem sees one generation or the
// next, never the key of one and the certificate of another unless a
// switch falls between its two opens; a crash at any step leaves the
// previous complete set or the new one.
const (
	setPrefix = ".writ-x509-"
	// linkPrefix names a symbolic link being made (with the set's id and
	// a random part), before it is renamed into place.
	linkPrefix = ".writ-link-"
	// reservedPrefix: configured file names may not start with it.
	reservedPrefix = ".writ-"
)

// setNames are the names of one configuration's set in the certificate
// directory.
type setNames struct {
	current   string // the link to the current generation
	previous  string // the link to the previous generation
	genPrefix string // generation directories: genPrefix + random
	tmpPrefix string // links being made: tmpPrefix + random
}

// namesFor returns the set names of the configured certificate, key and
// bundle file names.
func namesFor(svid, key, bundle string) setNames {
	sum := sha256.Sum256([]byte(svid + "\x00" + key + "\x00" + bundle))
	id := hex.EncodeToString(sum[:4])
	return setNames{
		current:   setPrefix + id,
		previous:  setPrefix + id + "-previous",
		genPrefix: setPrefix + id + ".",
		tmpPrefix: linkPrefix + id + ".",
	}
}

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

// ErrDirWritable: the certificate directory is writable by every user
// and not sticky, so anyone could replace the files in it.
var ErrDirWritable = errors.New("svidfiles: the certificate directory is writable by other users and not sticky")

// randomName returns prefix followed by a random part.
func randomName(prefix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return prefix + hex.EncodeToString(b[:])
}

// openDir opens the certificate directory dir, refusing one that every
// user may write to unless it is sticky. Every file of a set is made
// relative to the open directory, so that a path swapped under the
// writer is never followed.
func openDir(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	d := os.NewFile(uintptr(fd), dir)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		d.Close()
		return nil, fmt.Errorf("stat %s: %w", dir, err)
	}
	if st.Mode&0o002 != 0 && st.Mode&unix.S_ISVTX == 0 {
		d.Close()
		return nil, fmt.Errorf("%w: %s (mode %04o); make it sticky (like /tmp) or not writable by others", ErrDirWritable, dir, st.Mode&0o7777)
	}
	return d, nil
}

// writeSet makes files, together, the current X.509 files of dir under
// the set names n; it reports whether the set switched (readers see the
// new files). An error with true happened after the switch, in
// cleaning up. fault, if not nil, is called before each step, and an
// error from it stops writeSet there as a crash would (nothing is
// cleaned up).
func writeSet(dir string, n setNames, files []file, fault func(step string) error) (bool, error) {
	d, err := openDir(dir)
	if err != nil {
		return false, fmt.Errorf("write the X.509 files: %w", err)
	}
	defer d.Close()
	dfd := int(d.Fd())
	cur := genTarget(dir, n, n.current)
	if cur != "" && setIs(dir, n, cur, files) {
		return false, removeOldGenerations(dir, n)
	}
	step := func(s string) error {
		if fault == nil {
			return nil
		}
		return fault(s)
	}

	gen, err := writeGeneration(dfd, n, files)
	if err != nil {
		return false, fmt.Errorf("write the X.509 files: %w", err)
	}
	if err := step(stepGenerationWritten); err != nil {
		return false, err
	}
	if cur != "" {
		if err := replaceLink(dfd, n, n.previous, cur); err != nil {
			return false, err
		}
	}
	if err := step(stepPreviousLinked); err != nil {
		return false, err
	}
	if err := replaceLink(dfd, n, n.current, gen); err != nil {
		return false, err
	}
	if err := d.Sync(); err != nil {
		return true, fmt.Errorf("sync %s: %w", dir, err)
	}
	if err := step(stepSwitched); err != nil {
		return true, err
	}
	for _, f := range files {
		target := n.current + "/" + f.name
		if t, err := os.Readlink(filepath.Join(dir, f.name)); err == nil && t == target {
			continue
		}
		if err := replaceLink(dfd, n, f.name, target); err != nil {
			return true, err
		}
	}
	if err := d.Sync(); err != nil {
		return true, fmt.Errorf("sync %s: %w", dir, err)
	}
	if err := step(stepLinked); err != nil {
		return true, err
	}
	return true, removeOldGenerations(dir, n)
}

// writeGeneration makes a new generation directory in the directory dfd
// and writes files into it, all relative to open directories; it
// returns the generation's name.
func writeGeneration(dfd int, n setNames, files []file) (string, error) {
	var gen string
	for range 100 {
		gen = randomName(n.genPrefix)
		err := unix.Mkdirat(dfd, gen, 0o700)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EEXIST) {
			return "", fmt.Errorf("make a generation directory: %w", err)
		}
		gen = ""
	}
	if gen == "" {
		return "", errors.New("make a generation directory: every name tried exists")
	}
	gfd, err := unix.Openat(dfd, gen, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", gen, err)
	}
	g := os.NewFile(uintptr(gfd), gen)
	defer g.Close()
	var st unix.Stat_t
	if err := unix.Fstat(gfd, &st); err != nil {
		return "", fmt.Errorf("stat %s: %w", gen, err)
	}
	// Another user renamed a directory of theirs into its place.
	if int(st.Uid) != os.Geteuid() {
		return "", fmt.Errorf("%w: %s is owned by uid %d", ErrNotOurs, gen, st.Uid)
	}
	// Only this uid writes into it; readers get what each file's mode
	// allows, as in the certificate directory itself.
	if err := unix.Fchmod(gfd, 0o755); err != nil {
		return "", fmt.Errorf("chmod %s: %w", gen, err)
	}
	for _, f := range files {
		if err := createFileAt(gfd, gen, f); err != nil {
			return "", err
		}
	}
	if err := g.Sync(); err != nil {
		return "", fmt.Errorf("sync %s: %w", gen, err)
	}
	return gen, nil
}

// createFileAt creates f in the directory dfd (named dirName in
// errors), where it must not exist (a link placed there is not
// followed); it is 0600 until written.
func createFileAt(dfd int, dirName string, f file) error {
	path := dirName + "/" + f.name
	fd, err := unix.Openat(dfd, f.name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	fh := os.NewFile(uintptr(fd), path)
	_, err = fh.Write(f.data)
	if err == nil {
		err = fh.Chmod(f.mode)
	}
	if err == nil {
		err = fh.Sync()
	}
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// genTarget returns the generation directory name the link name in dir
// points to, or "" if it is not a link to one of set n.
func genTarget(dir string, n setNames, name string) string {
	t, err := os.Readlink(filepath.Join(dir, name))
	if err != nil || !n.isGen(t) {
		return ""
	}
	return t
}

// isGen reports whether name is a generation directory's name of set n.
func (n setNames) isGen(name string) bool {
	return strings.HasPrefix(name, n.genPrefix) && len(name) > len(n.genPrefix) && !strings.ContainsRune(name, '/')
}

// setIs reports whether generation gen of dir, a directory of this uid,
// holds exactly files, with their modes, and each file's path in dir
// links to it through set n's current link.
func setIs(dir string, n setNames, gen string, files []file) bool {
	if fi, err := os.Lstat(filepath.Join(dir, gen)); err != nil || !fi.IsDir() || !ownedByMe(fi) {
		return false
	}
	entries, err := os.ReadDir(filepath.Join(dir, gen))
	if err != nil || len(entries) != len(files) {
		return false
	}
	for _, f := range files {
		if t, err := os.Readlink(filepath.Join(dir, f.name)); err != nil || t != n.current+"/"+f.name {
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

// replaceLink makes name, in the directory dfd, a symbolic link to
// target with one rename: whatever was at name (a file, a link) is
// replaced, never followed. The link is made under a random name first,
// so that no name another user could take first stands in the way.
func replaceLink(dfd int, n setNames, name, target string) error {
	for range 100 {
		tmp := randomName(n.tmpPrefix)
		err := unix.Symlinkat(target, dfd, tmp)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return fmt.Errorf("link %s: %w", name, err)
		}
		if err := unix.Renameat(dfd, tmp, dfd, name); err != nil {
			_ = unix.Unlinkat(dfd, tmp, 0)
			return fmt.Errorf("link %s: %w", name, err)
		}
		return nil
	}
	return fmt.Errorf("link %s: every temporary name tried exists", name)
}

// removeOldGenerations removes set n's generation directories in dir
// other than the current and the previous one, and the links a crash
// left being made: only entries so named, owned by this uid.
func removeOldGenerations(dir string, n setNames) error {
	keep := []string{genTarget(dir, n, n.current), genTarget(dir, n, n.previous)}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list %s: %w", dir, err)
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		gen := n.isGen(name) && !slices.Contains(keep, name) && e.IsDir()
		tmp := strings.HasPrefix(name, n.tmpPrefix) && e.Type()&fs.ModeSymlink != 0
		if !gen && !tmp {
			continue
		}
		if fi, err := e.Info(); err != nil || !ownedByMe(fi) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
			errs = append(errs, fmt.Errorf("remove an old generation of the X.509 files: %w", err))
		}
	}
	return errors.Join(errs...)
}

// ownedByMe reports whether fi is owned by this process's effective uid.
func ownedByMe(fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == os.Geteuid()
}
