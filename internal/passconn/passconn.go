package passconn

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Pair makes the control socket over which a child process sends
// connections: ctl stays in this process, for Receive; child goes into the
// child's ExtraFiles, and the caller closes it once the child has started.
func Pair() (ctl *net.UnixConn, child *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	mine := os.NewFile(uintptr(fds[0]), "ctl")
	child = os.NewFile(uintptr(fds[1]), "child ctl")
	fc, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		child.Close()
		return nil, nil, err
	}
	return fc.(*net.UnixConn), child, nil
}

// Send waits until the server on conn has spoken (its HTTP/2 settings
// follow the transport handshake in which it pins the caller), peeking so
// that the bytes stay for whoever reads next, then sends conn's
// descriptor over the Unix socket whose descriptor is ctlFD.
func Send(ctlFD int, conn *net.UnixConn) error {
	raw, err := conn.File()
	if err != nil {
		return err
	}
	defer raw.Close()
	if _, _, err := unix.Recvfrom(int(raw.Fd()), make([]byte, 1), unix.MSG_PEEK); err != nil {
		return fmt.Errorf("wait for the server: %w", err)
	}
	if err := unix.Sendmsg(ctlFD, []byte{'c'}, unix.UnixRights(int(raw.Fd())), nil, 0); err != nil {
		return fmt.Errorf("pass the connection: %w", err)
	}
	return nil
}

// Receive reads one connection passed by Send over ctl, waiting at most
// timeout.
func Receive(ctl *net.UnixConn, timeout time.Duration) (net.Conn, error) {
	if err := ctl.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := ctl.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return nil, err
	}
	if len(msgs) != 1 {
		return nil, fmt.Errorf("%d control messages, want 1", len(msgs))
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil {
		return nil, err
	}
	if len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("%d descriptors passed, want 1", len(fds))
	}
	f := os.NewFile(uintptr(fds[0]), "passed")
	defer f.Close()
	return net.FileConn(f)
}

// Client returns a gRPC client whose one and only connection is conn: it
// never dials another.
func Client(conn net.Conn) (*grpc.ClientConn, error) {
	var used atomic.Bool
	return grpc.NewClient("passthrough:///passed",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) {
			if used.Swap(true) {
				return nil, errors.New("passconn: the passed connection is the only one")
			}
			return conn, nil
		}))
}
