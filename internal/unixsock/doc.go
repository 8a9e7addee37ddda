// Package unixsock is the one way Writ listens on a Unix socket: the
// Workload API socket, the CA server's admin socket and the agent's admin
// (health) socket. Listen applies the same rules to each:
//
//   - The path is a file system path (not empty, not a Linux abstract
//     name, no NUL byte) of at most MaxPathLen (103) bytes, so that
//     clients on Linux, the BSDs and macOS can all dial it; a longer one
//     is refused with an error saying so, before anything is created.
//   - Every directory passed through in resolving the path, from "/"
//     down, is owned by this user or root and not writable by others
//     unless sticky (like /tmp); every symbolic link met, at any hop of a
//     chain of links, is owned by this user or root. No other user can
//     then replace the socket or what leads to it.
//   - Missing directories are created only if Options.DirMode says so,
//     with exactly that mode whatever the umask.
//   - A file already at the path is removed only if it is a socket of
//     this user that nobody accepts connections on (ErrInUse otherwise);
//     a symbolic link is never followed, and a regular file, directory or
//     another user's socket is never replaced (ErrPath).
//   - The socket gets Options.Mode explicitly, and Close removes it only
//     if it is still the file Listen created.
//
// CheckDial applies the same rules from the client's side, to the
// socket file too: a client calls it before dialing a default path the
// user did not name, so that it never talks to a socket another local
// user created first.
//
// Example:
//
//	l, err := unixsock.Listen(path, unixsock.Options{Mode: 0o600})
//	if err != nil {
//		return err
//	}
//	defer l.Close()
//	return grpcServer.Serve(l)
//
// Caveats: Linux and other Unix systems only (it reads owners from
// syscall.Stat_t). The mode is set with chmod after bind, which is safe
// because no other user can write to the directory; until then the
// socket has the mode the umask leaves.
package unixsock
