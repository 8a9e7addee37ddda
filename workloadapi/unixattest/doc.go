// Package unixattest identifies the process at the other end of a
// Workload API connection from its peer credentials, and computes its unix
// selectors (entry.ParseSelector): unix:uid, unix:gid, unix:user,
// unix:group, unix:supplementary_gid, unix:supplementary_group, unix:path
// and unix:sha256.
//
// The process is pinned once, when the connection is accepted, and
// checked cheaply on every call after that:
//
//	a := unixattest.New(unixattest.Config{Logger: log})
//
//	// Once per connection, as soon as it is accepted (for gRPC, in the
//	// ServerHandshake of the server's transport credentials):
//	p, err := a.PinConn(conn) // or a.Pin(cred) with peercred.FromConn's cred
//	if err != nil { ... }     // no identity: PermissionDenied
//	// ... and p.Close() when the connection closes.
//
//	// On every call on the connection:
//	sel, err := p.Selectors(ctx) // includes p.Check()
//	if err != nil { ... }        // PermissionDenied "no identity issued"; log err
//	entries := matching(sel)     // entry.Match(e.Selectors, sel)
//	...
//	if err := p.Check(); err != nil { ... } // again before each stream message
//
// # Pinning
//
// Pin opens a pidfd of the peer (pidfd_open, Linux 5.3) and an O_PATH
// descriptor of its /proc/<pid> directory, and checks that the process
// has the effective uid and gid the kernel recorded at connect.
// PinConn takes the pidfd from the socket instead (SO_PEERPIDFD, Linux
// 6.5), which names the process that called connect even if its PID has
// been reused since. Without a pidfd (ENOSYS, or EPERM from a seccomp
// filter) the /proc/<pid> descriptor alone pins the process: the kernel
// ties it to the process, not to the number, so lookups through it fail
// once the process is gone.
//
// Check then costs three system calls (fstat of /proc/<pid>, stat of
// /proc/<pid>/exe, a zero-timeout poll of the pidfd) and reads no file. It
// fails with ErrProcessChanged if the process has exited (a zombie
// included), its effective uid or gid is not the one it connected with,
// or it runs another executable inode (it executed another program).
//
// # Selectors
//
// uid and gid are the effective ids at connect. Supplementary groups come
// from /proc/<pid>/status. Names come from os/user and are cached for a
// minute; an id without a name, or with a name that no selector can carry,
// simply has no name selector. path and sha256 describe the running inode:
// /proc/<pid>/exe, the kernel's own link to it, is opened (never a path the
// caller can swap), the inode is checked to be the one pinned, the path is
// that of the opened file, and the hash is of its content. Hashes are
// cached by (device, inode, size, mtime, ctime); one binary is hashed once
// however many processes run it, and at most Config.MaxConcurrentHashes
// are hashed at once. A process's selectors are remembered for a minute
// by its pinned identity (PID and start time, effective uid and gid,
// executable device and inode) and its executable's content key, so its
// further connections skip their computation; a reused PID has another
// start time, and every connection is pinned and checked as usual.
//
// # What fails closed
//
// Attestation is all or nothing: Selectors returns every selector or an
// error, never a partial set, because dropping a selector changes which
// entries match, and so which SVID is the caller's default. Pin, Check or
// Selectors fail, and the Workload API must answer PermissionDenied, when:
//
//   - the peer's PID is 0: it is in a PID namespace this one cannot see
//     (ErrNoPID);
//   - the process has exited, its PID was reused, its effective uid or gid
//     differs from the connection's, or it has executed another program
//     (ErrProcessChanged), at Pin or any time after;
//   - its executable was deleted or replaced on disk since it started: the
//     link reads "... (deleted)" and the path names no longer it
//     (ErrExecutableReplaced). Processes already attested keep working,
//     since their inode has not changed; new connections fail until the
//     process restarts. An executable whose real name ends in " (deleted)",
//     or one run from memfd or O_TMPFILE, is refused the same way;
//   - the executable is larger than Config.MaxHashSize, 256 MiB by default
//     (ErrExecutableTooLarge), or it changes while it is hashed;
//   - its path is not a valid unix:path selector (longer than the selector
//     limit, not clean, control characters);
//   - /proc cannot be read, a file there does not parse, or a name lookup
//     fails with anything but "unknown id".
//
// Selectors remembers its result, and the failures that cannot go away
// for the process; it retries the others on the next call.
//
// # Caveats
//
//   - The uid is the security boundary. Path and hash selectors describe
//     what a process runs, but cannot separate processes of one uid: any of
//     them can run the same binary, ptrace another, or pass it a connection.
//     Such an attacker is out of scope (THREATS.md). An entry with only
//     path or sha256 selectors is therefore open to every local user who
//     can run that binary.
//   - The attestor needs to read other users' /proc/<pid>/exe and status:
//     run it as root (or with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH).
//     Otherwise attestation of other users' processes fails closed.
//   - Pin without SO_PEERPIDFD cannot tell the connecting process from a
//     process with the same effective uid and gid that took its PID
//     between connect and Pin; only one of the same uid can, which is out
//     of scope. Use PinConn where the connection is at hand.
//   - Check does not notice: an exec of the same inode (even under another
//     hard link name, so the path selector keeps the first name); a change
//     of supplementary groups (which needs CAP_SETGID); credentials changed
//     by a thread other than the thread group leader, which /proc/<pid>
//     shows. A process whose main thread has exited while others run has
//     no executable link and fails closed.
//   - Hashes are of the file at the time it is read. The kernel refuses
//     writes to a running executable, and any write or chmod changes the
//     cache key; a file changed in the last few seconds (within timestamp
//     granularity) is hashed but not cached. Hashing trusts the
//     filesystem: a FUSE filesystem run by the caller can serve other
//     bytes to the hash than to exec, or stall the read, and with it the
//     calling goroutine and a hash slot, indefinitely. ctx bounds how long
//     other callers wait for a slot or for that hash, not the read itself.
//   - Names may be a minute stale after /etc/passwd or /etc/group change.
//   - Only Linux is supported; elsewhere Pin and PinConn return an error
//     wrapping errors.ErrUnsupported.
package unixattest
