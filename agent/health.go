package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// healthService answers from the agent's state at call time: SERVING
// only while the agent holds an unexpired agent SVID the server has not
// refused.
type healthService struct {
	healthpb.UnimplementedHealthServer
	a *Agent
}

func (h healthService) Check(_ context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	if req.GetService() != "" {
		return nil, status.Error(codes.NotFound, "unknown service")
	}
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if h.a.Healthy() {
		st = healthpb.HealthCheckResponse_SERVING
	}
	return &healthpb.HealthCheckResponse{Status: st}, nil
}

type healthServer struct {
	g    *grpc.Server
	lis  net.Listener
	path string
}

// serveHealth listens on the admin socket in the data dir. The data dir's
// 0700 mode keeps other users out.
func (a *Agent) serveHealth() (*healthServer, error) {
	path := a.adminSocket
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("admin socket path %s exists and is not a socket; refusing to replace it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale admin socket: %w", err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		lis.Close()
		return nil, err
	}
	g := grpc.NewServer(grpc.MaxRecvMsgSize(4 << 10))
	healthpb.RegisterHealthServer(g, healthService{a: a})
	return &healthServer{g: g, lis: lis, path: path}, nil
}

func (h *healthServer) serve() { _ = h.g.Serve(h.lis) }

func (h *healthServer) stop() {
	h.g.Stop()
	_ = os.Remove(h.path)
}
