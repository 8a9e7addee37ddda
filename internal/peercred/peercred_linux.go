package peercred

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// FromConn returns the credentials the kernel recorded for the peer of c
// when the connection was made (SO_PEERCRED).
func FromConn(c *net.UnixConn) (Cred, error) {
	if c == nil {
		return Cred{}, errClosed
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return Cred{}, fmt.Errorf("peercred: %w", err)
	}
	var (
		ucred   *unix.Ucred
		sockErr error
	)
	err = rc.Control(func(fd uintptr) {
		ucred, sockErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err != nil {
		return Cred{}, fmt.Errorf("peercred: %w", err)
	}
	if sockErr != nil {
		return Cred{}, fmt.Errorf("peercred: read SO_PEERCRED: %w", sockErr)
	}
	return Cred{PID: ucred.Pid, UID: ucred.Uid, GID: ucred.Gid}, nil
}
