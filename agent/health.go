package agent

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"writ.dev/writ/internal/unixsock"
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
	g   *grpc.Server
	lis *unixsock.Listener
}

// serveHealth listens on the admin socket in the data dir, with
// internal/unixsock's rules; the socket is mode 0600 and the data dir's
// 0700 mode keeps other users out too.
func (a *Agent) serveHealth() (*healthServer, error) {
	lis, err := unixsock.Listen(a.adminSocket, unixsock.Options{Mode: 0o600})
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	g := grpc.NewServer(grpc.MaxRecvMsgSize(4 << 10))
	healthpb.RegisterHealthServer(g, healthService{a: a})
	return &healthServer{g: g, lis: lis}, nil
}

func (h *healthServer) serve() error { return h.g.Serve(h.lis) }

// stop stops serving and removes the socket if it is still the one
// serveHealth created.
func (h *healthServer) stop() {
	h.g.Stop()
	_ = h.lis.Close()
}
