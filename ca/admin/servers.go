package admin

import (
	"context"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/datastore"
)

// serverService serves adminv1.ServerService.
type serverService struct {
	adminv1.UnimplementedServerServiceServer
	s *Service
}

// ListServers lists the servers' records, in ID order.
func (ss *serverService) ListServers(ctx context.Context, _ *adminv1.ListServersRequest) (*adminv1.ListServersResponse, error) {
	s := ss.s
	if _, err := s.begin(ctx); err != nil {
		return nil, err
	}
	servers, err := s.store.ListServers(ctx)
	if err != nil {
		return nil, s.internal(ctx, "list servers", err)
	}
	resp := &adminv1.ListServersResponse{Servers: make([]*adminv1.Server, len(servers))}
	for i, srv := range servers {
		resp.Servers[i] = serverToWire(srv)
	}
	return resp, nil
}

func serverToWire(s *datastore.Server) *adminv1.Server {
	return &adminv1.Server{
		Id:        s.ID,
		Address:   s.Address,
		Version:   s.Version,
		StartedAt: unixSeconds(s.StartedAt),
		Heartbeat: unixSeconds(s.Heartbeat),
	}
}
