package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// errNotServing is returned when the health service answers, with a
// status other than SERVING.
var errNotServing = errors.New("not serving")

// checkHealth asks the gRPC health service on the Unix socket at path
// whether what (a "server" or an "agent") is serving. Its errors say what
// is wrong in words: no socket, a socket nobody listens on, permission
// denied, no answer in time, a socket of something else.
func checkHealth(ctx context.Context, what, path string, timeout time.Duration) error {
	if err := probeSocket(what, path, timeout); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := grpc.NewClient("passthrough:///localhost",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}),
	)
	if err != nil {
		return fmt.Errorf("%s at %s: %w", what, path, err)
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
	switch status.Code(err) {
	case codes.OK:
	case codes.DeadlineExceeded:
		return fmt.Errorf("no answer from the %s at %s within %s", what, path, timeout)
	case codes.Unimplemented:
		return fmt.Errorf("%s does not serve health checks: is it the %s's socket?", path, what)
	case codes.Unavailable:
		return fmt.Errorf("the %s at %s did not answer: %s (is it a gRPC socket?)", what, path, status.Convert(err).Message())
	default:
		return fmt.Errorf("the %s at %s answered: %s", what, path, status.Convert(err).Message())
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("the %s at %s is %w (status %s)", what, path, errNotServing, resp.GetStatus())
	}
	return nil
}

// probeSocket connects to the Unix socket at path once and explains why
// it cannot.
func probeSocket(what, path string, timeout time.Duration) error {
	conn, err := net.DialTimeout("unix", path, timeout)
	if err == nil {
		return conn.Close()
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if _, serr := os.Lstat(path); errors.Is(serr, fs.ErrNotExist) {
			return fmt.Errorf("no %s listening at %s: there is no such socket (is the %s running, with this data dir or socket path?)", what, path, what)
		}
		return fmt.Errorf("no %s listening at %s", what, path)
	case errors.Is(err, syscall.ECONNREFUSED):
		if info, serr := os.Lstat(path); serr == nil && info.Mode().Type() != fs.ModeSocket {
			return fmt.Errorf("%s is not a socket", path)
		}
		return fmt.Errorf("no %s listening at %s: the socket exists but nothing accepts connections on it (has the %s stopped?)", what, path, what)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("permission denied on %s: this user may not connect to the %s's socket or reach its directory", path, what)
	case errors.Is(err, syscall.ENOTSOCK), errors.Is(err, syscall.EPROTOTYPE):
		return fmt.Errorf("%s is not a socket", path)
	case errors.Is(err, syscall.ENOTDIR):
		return fmt.Errorf("no %s listening at %s: a component of the path is not a directory", what, path)
	case errors.Is(err, syscall.EINVAL) && len(path) >= 104:
		return fmt.Errorf("socket path %s is too long (%d bytes; Unix sockets allow about 104)", path, len(path))
	}
	if oe, ok := errors.AsType[*net.OpError](err); ok && oe.Err != nil {
		err = oe.Err
	}
	return fmt.Errorf("cannot connect to %s: %w", path, err)
}
