//go:build !linux

package peercred

import (
	"errors"
	"fmt"
	"net"
	"runtime"
)

// FromConn is not implemented on this OS: it returns an error wrapping
// errors.ErrUnsupported.
func FromConn(c *net.UnixConn) (Cred, error) {
	if c == nil {
		return Cred{}, errClosed
	}
	return Cred{}, fmt.Errorf("peercred: peer credentials on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}
