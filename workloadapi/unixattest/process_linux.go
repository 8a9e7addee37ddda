package unixattest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"writ.dev/writ/ca/entry"
	"writ.dev/writ/internal/peercred"

	"writ.dev/writ/internal/logkey"
)

// Process is a process pinned at connect time. Its methods are safe for
// concurrent use.
type Process struct {
	a     *Attestor
	cred  peercred.Cred
	start uint64 // start time in clock ticks since boot, for logs
	// exeDev and exeIno identify the executable the process ran when it
	// was pinned.
	exeDev, exeIno uint64

	mu      sync.RWMutex // guards fds (not its contents, which are fixed)
	fds     *procFDs     // nil after Close
	cleanup runtime.Cleanup

	// selLock is a one-slot semaphore held while the selectors are
	// computed; it guards sel, selErr and selDone.
	selLock chan struct{}
	sel     []entry.Selector
	selErr  error
	selDone bool
}

// procFDs are the kernel handles that pin a process.
type procFDs struct {
	// pidfd is the process's pidfd, or -1 where the kernel has none.
	pidfd int
	// dirfd is an O_PATH descriptor of /proc/<pid>. The kernel binds it to
	// the process, not to the number: once the process is gone, lookups
	// under it fail, even if the PID is reused.
	dirfd int
}

func (f *procFDs) close() {
	if f.pidfd >= 0 {
		unix.Close(f.pidfd)
	}
	unix.Close(f.dirfd)
}

func changed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProcessChanged, fmt.Sprintf(format, args...))
}

// Pin pins the process the kernel recorded as the peer of a connection
// (SO_PEERCRED), and checks that it still has the effective uid and gid it
// connected with. Call it once per connection, as soon as the connection
// is accepted; the Process must be closed with the connection.
//
// Between connect and Pin the process may exit and its PID be reused;
// Pin then fails unless the new process has the same effective uid and
// gid. PinConn closes that gap on kernels that have SO_PEERPIDFD.
func (a *Attestor) Pin(cred peercred.Cred) (*Process, error) {
	if cred.PID <= 0 {
		return nil, fmt.Errorf("%w (pid %d)", ErrNoPID, cred.PID)
	}
	pidfd := -1
	if !a.noPidfd.Load() {
		fd, err := unix.PidfdOpen(int(cred.PID), 0)
		switch {
		case err == nil:
			pidfd = fd
		case errors.Is(err, unix.ESRCH):
			return nil, changed("pid %d exited before it was pinned", cred.PID)
		case errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EPERM):
			// No pidfd_open (Linux < 5.3), or a seccomp filter refuses
			// it; pidfd_open itself never answers EPERM.
			a.noPidfd.Store(true)
			a.warnPidfd.Do(func() {
				a.log.Warn("pidfd_open is unavailable; pinning processes by their /proc directory", logkey.Error, err)
			})
		default:
			return nil, fmt.Errorf("unixattest: pidfd_open pid %d: %w", cred.PID, err)
		}
	}
	return a.pin(cred, pidfd)
}

// PinConn is Pin for the peer of c. Where the kernel has SO_PEERPIDFD
// (Linux 6.5), the pidfd comes from the socket itself: it is the process
// that called connect, whatever happened to its PID since, so a reused PID
// cannot be mistaken for it. Elsewhere PinConn is Pin(peercred.FromConn(c)).
func (a *Attestor) PinConn(c *net.UnixConn) (*Process, error) {
	cred, err := peercred.FromConn(c)
	if err != nil {
		return nil, err
	}
	if cred.PID <= 0 {
		return nil, fmt.Errorf("%w (pid %d)", ErrNoPID, cred.PID)
	}
	if a.noPidfd.Load() {
		return a.Pin(cred)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("unixattest: %w", err)
	}
	pidfd, sockErr := -1, error(nil)
	err = rc.Control(func(fd uintptr) {
		pidfd, sockErr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD)
	})
	switch {
	case err != nil:
		return nil, fmt.Errorf("unixattest: %w", err)
	case sockErr == nil:
		return a.pin(cred, pidfd)
	case errors.Is(sockErr, unix.ENOPROTOOPT):
		return a.Pin(cred)
	case errors.Is(sockErr, unix.ESRCH), errors.Is(sockErr, unix.EINVAL):
		// Kernels before 6.9 refuse a pidfd for a peer that has been
		// reaped; later ones return one that polls as exited, which pin
		// refuses.
		return nil, changed("pid %d exited before it was pinned", cred.PID)
	default:
		return nil, fmt.Errorf("unixattest: read SO_PEERPIDFD: %w", sockErr)
	}
}

// pin pins the process cred.PID, of which pidfd (owned by pin) is a pidfd
// or -1.
func (a *Attestor) pin(cred peercred.Cred, pidfd int) (_ *Process, err error) {
	fds := &procFDs{pidfd: pidfd, dirfd: -1}
	defer func() {
		if err != nil {
			if fds.pidfd >= 0 {
				unix.Close(fds.pidfd)
			}
			if fds.dirfd >= 0 {
				unix.Close(fds.dirfd)
			}
		}
	}()
	dir := a.procRoot + "/" + strconv.Itoa(int(cred.PID))
	fds.dirfd, err = openRetry(unix.AT_FDCWD, dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
	if err != nil {
		fds.dirfd = -1
		if errors.Is(err, unix.ENOENT) {
			return nil, changed("pid %d exited before it was pinned", cred.PID)
		}
		return nil, fmt.Errorf("unixattest: open %s: %w", dir, err)
	}
	p := &Process{a: a, cred: cred, fds: fds, selLock: make(chan struct{}, 1)}

	// The owner of /proc/<pid> is the process's effective uid and gid,
	// whatever its dumpable state: the ids SO_PEERCRED reports.
	var st unix.Stat_t
	if err := fstat(fds.dirfd, &st); err != nil {
		return nil, fmt.Errorf("unixattest: stat %s: %w", dir, err)
	}
	if st.Uid != cred.UID || st.Gid != cred.GID {
		return nil, changed("pid %d has effective uid/gid %d/%d, not %d/%d as at connect: it changed credentials or its PID was reused",
			cred.PID, st.Uid, st.Gid, cred.UID, cred.GID)
	}
	if err := fstatat(fds.dirfd, "exe", &st); err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
			return nil, changed("pid %d exited before it was pinned", cred.PID)
		}
		return nil, fmt.Errorf("unixattest: pid %d: stat executable: %w", cred.PID, err)
	}
	p.exeDev, p.exeIno = inode(&st)

	b, err := readFileAt(fds.dirfd, "stat", maxStatSize)
	if err != nil {
		return nil, fmt.Errorf("unixattest: pid %d: %w", cred.PID, err)
	}
	ps, err := parseStat(b)
	if err != nil {
		return nil, fmt.Errorf("unixattest: pid %d: %w", cred.PID, err)
	}
	if ps.PID != cred.PID {
		return nil, fmt.Errorf("unixattest: %s/stat names pid %d: ProcRoot is not the procfs of this PID namespace", dir, ps.PID)
	}
	if ps.State == 'Z' || ps.State == 'X' {
		return nil, changed("pid %d exited before it was pinned", cred.PID)
	}
	p.start = ps.StartTicks

	// Last: if the pidfd's process is still alive, /proc/<pid> was opened
	// while the number was its own, so every read above was of it.
	if err := p.alive(fds); err != nil {
		return nil, err
	}
	p.cleanup = runtime.AddCleanup(p, (*procFDs).close, fds)
	a.log.Debug("pinned process", logkey.PID, cred.PID, logkey.UID, cred.UID, logkey.GID, cred.GID,
		keyStart, p.start, keyPidfd, fds.pidfd >= 0)
	return p, nil
}

// Check reports whether the process is still the one that connected: it
// has not exited (a reused PID cannot pass for it), and it has the same
// effective uid and gid, and runs the same executable inode, as when it
// was pinned. It returns an error wrapping ErrProcessChanged if not, and
// ErrClosed after Close. It makes three system calls and reads no files.
//
// Check does not notice an exec of the same executable inode (run under
// the same or another hard link), nor a change of supplementary groups
// (which needs CAP_SETGID), nor a change of credentials of a thread
// other than the thread group leader.
func (p *Process) Check() error {
	p.mu.RLock()
	// The deferred unlock also keeps p, and so its fds, alive until the
	// system calls are done.
	defer p.mu.RUnlock()
	if p.fds == nil {
		return ErrClosed
	}
	return p.check(p.fds)
}

func (p *Process) check(fds *procFDs) error {
	var st unix.Stat_t
	if err := fstat(fds.dirfd, &st); err != nil {
		return changed("pid %d: %v", p.cred.PID, err)
	}
	if st.Uid != p.cred.UID || st.Gid != p.cred.GID {
		return changed("pid %d: effective uid/gid changed from %d/%d to %d/%d",
			p.cred.PID, p.cred.UID, p.cred.GID, st.Uid, st.Gid)
	}
	if err := fstatat(fds.dirfd, "exe", &st); err != nil {
		// A process that has exited, even a zombie, has no executable.
		return changed("pid %d: no executable (exited?): %v", p.cred.PID, err)
	}
	if dev, ino := inode(&st); dev != p.exeDev || ino != p.exeIno {
		return changed("pid %d: executed another program", p.cred.PID)
	}
	// Last, so that the stats above are known to be of a live process.
	return p.alive(fds)
}

// alive reports an error if the process has exited. Without a pidfd it
// relies on the caller having found the executable, which an exited
// process does not have.
func (p *Process) alive(fds *procFDs) error {
	if fds.pidfd < 0 {
		return nil
	}
	pfd := [1]unix.PollFd{{Fd: int32(fds.pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(pfd[:], 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return changed("pid %d: poll pidfd: %v", p.cred.PID, err)
		}
		if n != 0 && pfd[0].Revents != 0 {
			// POLLIN: exited; POLLHUP: reaped; anything else: unknown.
			return changed("pid %d exited", p.cred.PID)
		}
		return nil
	}
}

// Close releases the process's pidfd and /proc directory. It is
// idempotent.
func (p *Process) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fds == nil {
		return nil
	}
	p.cleanup.Stop()
	p.fds.close()
	p.fds = nil
	return nil
}

// Selectors returns the process's unix selectors, sorted, then confirms
// with Check that the process has not changed. They are computed on the
// first call and remembered; so are failures that cannot go away for this
// process (those wrapping ErrProcessChanged, ErrExecutableReplaced,
// ErrExecutableTooLarge or ErrClosed, and an executable path that is not a
// valid selector). Other failures, such as I/O errors, a failed name
// lookup or ctx ending, are retried by the next call: a gRPC client keeps
// its connection, and so its Process, across retries. Every call returns a
// fresh slice.
//
// The selectors are unix:uid and unix:gid (the effective ids at connect);
// unix:supplementary_gid for each supplementary group; unix:user,
// unix:group and unix:supplementary_group for those ids that have a name
// (valid as a selector value); unix:path, the path of the running
// executable; and unix:sha256, the hash of the running executable's
// content. Any failure to compute one of them fails the whole
// attestation: Selectors never returns a partial set.
func (p *Process) Selectors(ctx context.Context) ([]entry.Selector, error) {
	select {
	case p.selLock <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var fresh bool
	var exe fileKey
	if !p.selDone {
		var cached []entry.Selector
		var ok bool
		exe, ok = p.exeKey()
		if ok {
			cached, ok = p.a.identities.get(p.identity(), exe, p.a.clock.Now())
		}
		if ok {
			p.sel, p.selErr, p.selDone = cached, nil, true
		} else {
			sel, err := p.computeSelectors(ctx)
			if err != nil && !permanent(err) {
				<-p.selLock
				return nil, err
			}
			p.sel, p.selErr, p.selDone = sel, err, true
			fresh = err == nil
		}
	}
	sel, err := p.sel, p.selErr
	<-p.selLock
	if err != nil {
		return nil, err
	}
	if err := p.Check(); err != nil {
		return nil, err
	}
	// Shared with the process's other connections only once it is known
	// to be alive and unchanged, for an executable whose change time has
	// settled (as for the hash cache).
	if fresh && exe != (fileKey{}) && p.a.clock.Now().Sub(time.Unix(0, exe.ctime)) >= ctimeSettle {
		if now, ok := p.exeKey(); ok && now == exe {
			p.a.identities.put(p.identity(), exe, sel, p.a.clock.Now())
		}
	}
	return slices.Clone(sel), nil
}

// identity is the process's identity as pinned.
func (p *Process) identity() procIdentity {
	return procIdentity{pid: p.cred.PID, start: p.start, uid: p.cred.UID, gid: p.cred.GID, exeDev: p.exeDev, exeIno: p.exeIno}
}

// exeKey returns the content key of the executable the process runs, if
// it is still the inode it was pinned with.
func (p *Process) exeKey() (fileKey, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.fds == nil {
		return fileKey{}, false
	}
	var st unix.Stat_t
	if err := fstatat(p.fds.dirfd, "exe", &st); err != nil {
		return fileKey{}, false
	}
	k := keyOf(&st)
	if k.dev != p.exeDev || k.ino != p.exeIno {
		return fileKey{}, false
	}
	return k, true
}

// errBadPath means the executable's path cannot be a unix:path selector
// (too long, not clean, or with control characters).
var errBadPath = errors.New("unixattest: executable path is not a valid unix:path selector")

// permanent reports whether err, from computing a process's selectors,
// would recur on every later attempt for the same process.
func permanent(err error) bool {
	for _, e := range []error{ErrProcessChanged, ErrExecutableReplaced, ErrExecutableTooLarge, ErrClosed, errBadPath} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// The unix selector keys.
const (
	selUID        = "uid:"
	selGID        = "gid:"
	selUser       = "user:"
	selGroup      = "group:"
	selSupGID     = "supplementary_gid:"
	selSupGroup   = "supplementary_group:"
	selPath       = "path:"
	selSHA256     = "sha256:"
	selectorType  = "unix"
	deletedSuffix = " (deleted)"
)

func (p *Process) computeSelectors(ctx context.Context) ([]entry.Selector, error) {
	p.a.computeCount.Add(1)
	pid := p.cred.PID
	// Read what is needed through the /proc directory, then let go of it
	// so that Close need not wait for hashing.
	p.mu.RLock()
	if p.fds == nil {
		p.mu.RUnlock()
		return nil, ErrClosed
	}
	status, err := readFileAt(p.fds.dirfd, "status", maxStatusSize)
	var exe int
	if err == nil {
		// The kernel's magic link to the executable the process runs: it
		// opens that inode, wherever its name has moved since, and no name
		// the caller controls is resolved.
		exe, err = openRetry(p.fds.dirfd, "exe", unix.O_RDONLY|unix.O_CLOEXEC)
		if err != nil {
			err = fmt.Errorf("open executable: %w", err)
		}
	}
	if err != nil {
		// A process that has exited (its PID reused or not) has neither:
		// that is no I/O error to retry, but the process changing.
		if cerr := p.check(p.fds); cerr != nil {
			err = cerr
		} else {
			err = fmt.Errorf("unixattest: pid %d: %w", pid, err)
		}
	}
	p.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	defer unix.Close(exe)

	st, err := parseStatus(status)
	if err != nil {
		return nil, fmt.Errorf("unixattest: pid %d: %w", pid, err)
	}
	if st.UID[1] != p.cred.UID || st.GID[1] != p.cred.GID {
		return nil, changed("pid %d: effective uid/gid changed from %d/%d to %d/%d",
			pid, p.cred.UID, p.cred.GID, st.UID[1], st.GID[1])
	}

	var fst unix.Stat_t
	if err := fstat(exe, &fst); err != nil {
		return nil, fmt.Errorf("unixattest: pid %d: stat executable: %w", pid, err)
	}
	if dev, ino := inode(&fst); dev != p.exeDev || ino != p.exeIno {
		return nil, changed("pid %d: executed another program", pid)
	}
	if fst.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("unixattest: pid %d: executable is not a regular file", pid)
	}
	// The path of the very file opened above, so path and hash describe
	// one inode even if the process executes something else meanwhile.
	path, err := readlink(p.a.selfFDPath + strconv.Itoa(exe))
	if err != nil {
		return nil, fmt.Errorf("unixattest: pid %d: path of executable: %w", pid, err)
	}
	if strings.HasSuffix(path, deletedSuffix) {
		return nil, fmt.Errorf("%w (pid %d)", ErrExecutableReplaced, pid)
	}
	pathSel := entry.Selector{Type: selectorType, Value: selPath + path}
	if _, err := entry.ParseSelector(pathSel.String()); err != nil {
		// The error would quote the path; keep it out of errors and logs.
		return nil, fmt.Errorf("%w (pid %d, %d bytes)", errBadPath, pid, len(path))
	}
	sum, err := p.a.executableHash(ctx, exe, &fst)
	if err != nil {
		return nil, fmt.Errorf("unixattest: pid %d: hash executable: %w", pid, err)
	}

	sel := make([]entry.Selector, 0, 6+2*len(st.Groups))
	add := func(key, value string) {
		sel = append(sel, entry.Selector{Type: selectorType, Value: key + value})
	}
	id := func(n uint32) string { return strconv.FormatUint(uint64(n), 10) }
	add(selUID, id(p.cred.UID))
	add(selGID, id(p.cred.GID))
	sel = append(sel, pathSel)
	add(selSHA256, hex.EncodeToString(sum[:]))
	names := p.a.names
	if name, err := names.user(p.cred.UID); err != nil {
		return nil, err
	} else if name != "" {
		add(selUser, name)
	}
	if name, err := names.group(p.cred.GID); err != nil {
		return nil, err
	} else if name != "" {
		add(selGroup, name)
	}
	for _, g := range st.Groups {
		add(selSupGID, id(g))
		if name, err := names.group(g); err != nil {
			return nil, err
		} else if name != "" {
			add(selSupGroup, name)
		}
	}
	slices.SortFunc(sel, entry.Selector.Compare)
	sel = slices.CompactFunc(sel, func(a, b entry.Selector) bool { return a == b })
	for _, s := range sel {
		if _, err := entry.ParseSelector(s.String()); err != nil {
			return nil, fmt.Errorf("unixattest: pid %d: computed an invalid selector", pid)
		}
	}
	// The status and executable were read between pinning and this check.
	if err := p.Check(); err != nil {
		return nil, err
	}
	p.a.log.Debug("attested process", logkey.PID, pid, logkey.UID, p.cred.UID, "selectors", len(sel))
	return sel, nil
}

// executableHash returns the SHA-256 of the open executable fd, whose
// stat is st, from the cache if it holds it.
func (a *Attestor) executableHash(ctx context.Context, fd int, st *unix.Stat_t) ([sha256.Size]byte, error) {
	if st.Size > a.maxHashSize {
		return [sha256.Size]byte{}, fmt.Errorf("%w: %d bytes, limit %d", ErrExecutableTooLarge, st.Size, a.maxHashSize)
	}
	key := keyOf(st)
	if a.clock.Now().Sub(time.Unix(0, key.ctime)) < ctimeSettle {
		// Changed too recently for the key to stand for the content.
		return a.hashFile(ctx, fd, key)
	}
	return a.hashes.get(ctx, key, func() ([sha256.Size]byte, error) {
		return a.hashFile(ctx, fd, key)
	})
}

const hashChunk = 256 << 10

// hashFile hashes the key.size bytes of fd, in a hash slot, and fails if
// the file changes meanwhile.
func (a *Attestor) hashFile(ctx context.Context, fd int, key fileKey) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	select {
	case a.hashSlots <- struct{}{}:
	case <-ctx.Done():
		return sum, ctx.Err()
	}
	defer func() { <-a.hashSlots }()
	a.hashCount.Add(1)

	h := sha256.New()
	buf := make([]byte, min(hashChunk, key.size))
	for off := int64(0); off < key.size; {
		if err := ctx.Err(); err != nil {
			return sum, err
		}
		n, err := pread(fd, buf[:min(int64(len(buf)), key.size-off)], off)
		if err != nil {
			return sum, err
		}
		if n == 0 {
			return sum, errors.New("executable shrank while it was hashed")
		}
		h.Write(buf[:n])
		off += int64(n)
	}
	var st unix.Stat_t
	if err := fstat(fd, &st); err != nil {
		return sum, err
	}
	if keyOf(&st) != key {
		return sum, errors.New("executable changed while it was hashed")
	}
	h.Sum(sum[:0])
	a.log.Debug("hashed executable", logkey.Size, key.size)
	return sum, nil
}

// inode returns the device and inode numbers in st (whose types vary by
// architecture).
func inode(st *unix.Stat_t) (dev, ino uint64) {
	return uint64(st.Dev), uint64(st.Ino) //nolint:unconvert // uint32 on some architectures
}

func keyOf(st *unix.Stat_t) fileKey {
	dev, ino := inode(st)
	return fileKey{
		dev:   dev,
		ino:   ino,
		size:  st.Size,
		mtime: st.Mtim.Nano(),
		ctime: st.Ctim.Nano(),
	}
}

// System calls, retried on EINTR.

func openRetry(dirfd int, path string, flags int) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, path, flags, 0)
		if !errors.Is(err, unix.EINTR) {
			return fd, err
		}
	}
}

func fstat(fd int, st *unix.Stat_t) error {
	for {
		err := unix.Fstat(fd, st)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// fstatat stats name in dirfd, following a final symlink: for "exe", the
// kernel's link to the running executable.
func fstatat(dirfd int, name string, st *unix.Stat_t) error {
	for {
		err := unix.Fstatat(dirfd, name, st, 0)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

func pread(fd int, b []byte, off int64) (int, error) {
	for {
		n, err := unix.Pread(fd, b, off)
		if !errors.Is(err, unix.EINTR) {
			return n, err
		}
	}
}

// readlink reads a symlink of at most unix.PathMax bytes.
func readlink(path string) (string, error) {
	buf := make([]byte, unix.PathMax)
	for {
		n, err := unix.Readlink(path, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return "", err
		}
		if n >= len(buf) {
			return "", errors.New("link is longer than PATH_MAX")
		}
		return string(buf[:n]), nil
	}
}

// readFileAt reads name in dirfd, which must be a regular file of at most
// max bytes.
func readFileAt(dirfd int, name string, max int) ([]byte, error) {
	fd, err := openRetry(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	defer unix.Close(fd)
	b := make([]byte, 0, 4096)
	for {
		if len(b) == cap(b) {
			if len(b) > max {
				return nil, fmt.Errorf("%s is larger than %d bytes", name, max)
			}
			b = slices.Grow(b, len(b))
		}
		n, err := unix.Read(fd, b[len(b):cap(b)])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		if n == 0 {
			break
		}
		b = b[:len(b)+n]
	}
	if len(b) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, max)
	}
	return b, nil
}
