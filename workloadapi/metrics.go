package workloadapi

import (
	"context"
	"path"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// unaryMetrics counts finished calls by RPC and code. Only registered
// methods reach interceptors, so the RPC label is bounded.
func (s *Server) unaryMetrics(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	s.metrics.WorkloadCall(path.Base(info.FullMethod), status.Code(err).String())
	return resp, err
}

// streamMetrics counts open streams and finished ones by RPC and code.
func (s *Server) streamMetrics(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	rpc := path.Base(info.FullMethod)
	s.metrics.StreamOpened(rpc)
	err := handler(srv, ss)
	s.metrics.StreamClosed(rpc)
	s.metrics.WorkloadCall(rpc, status.Code(err).String())
	return err
}
