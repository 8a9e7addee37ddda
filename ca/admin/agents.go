package admin

import (
	"context"
	"fmt"
	"time"

	"writ.dev/writ/ca/datastore"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
)

func msgAgentNotFound(id spiffeid.ID) string { return fmt.Sprintf("agent %q not found", id.String()) }

// agentService serves adminv1.AgentService.
type agentService struct {
	adminv1.UnimplementedAgentServiceServer
	s *Service
}

func (as *agentService) ListAgents(ctx context.Context, _ *adminv1.ListAgentsRequest) (*adminv1.ListAgentsResponse, error) {
	s := as.s
	if _, err := s.begin(ctx); err != nil {
		return nil, err
	}
	agents, err := s.store.ListAgents(ctx)
	if err != nil {
		return nil, s.internal(ctx, "list agents", err)
	}
	resp := &adminv1.ListAgentsResponse{Agents: make([]*adminv1.Agent, len(agents))}
	for i, a := range agents {
		resp.Agents[i] = agentToWire(a)
	}
	return resp, nil
}

func (as *agentService) GetAgent(ctx context.Context, req *adminv1.GetAgentRequest) (*adminv1.Agent, error) {
	s := as.s
	if _, err := s.begin(ctx); err != nil {
		return nil, err
	}
	id, err := s.parseID("spiffe_id", req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	a, err := s.store.FetchAgent(ctx, id)
	if err != nil {
		return nil, s.storeError(ctx, "fetch agent", err, msgAgentNotFound(id), "")
	}
	return agentToWire(a), nil
}

// EvictAgent deletes the agent's record and returns it as it was read just
// before.
func (as *agentService) EvictAgent(ctx context.Context, req *adminv1.EvictAgentRequest) (*adminv1.Agent, error) {
	s := as.s
	c, err := s.begin(ctx)
	if err != nil {
		return nil, err
	}
	id, err := s.parseID("spiffe_id", req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	c.spiffeID = id.String()
	a, err := s.store.DeleteAgent(ctx, id)
	if err != nil {
		return nil, s.storeError(ctx, "delete agent", err, msgAgentNotFound(id), "")
	}
	return agentToWire(a), nil
}

func (as *agentService) BanAgent(ctx context.Context, req *adminv1.BanAgentRequest) (*adminv1.Agent, error) {
	return as.s.setBanned(ctx, req.GetSpiffeId(), true)
}

func (as *agentService) UnbanAgent(ctx context.Context, req *adminv1.UnbanAgentRequest) (*adminv1.Agent, error) {
	return as.s.setBanned(ctx, req.GetSpiffeId(), false)
}

// setBanned sets the agent's Banned flag and returns the agent as stored.
// Banning a banned agent (or unbanning one that is not) succeeds and
// writes the record again.
func (s *Service) setBanned(ctx context.Context, rawID string, banned bool) (*adminv1.Agent, error) {
	c, err := s.begin(ctx)
	if err != nil {
		return nil, err
	}
	id, err := s.parseID("spiffe_id", rawID)
	if err != nil {
		return nil, err
	}
	c.spiffeID = id.String()
	now := s.clock.Now()
	updated, err := s.store.UpdateAgent(ctx, id, func(a *datastore.Agent) error {
		a.Banned = banned
		// Never backwards: a server whose clock runs ahead may have
		// recorded a later time (the node API compares agent SVIDs'
		// signing times with it).
		a.UpdatedAt = laterTime(a.UpdatedAt, now)
		return nil
	})
	if err != nil {
		return nil, s.storeError(ctx, "update agent", err, msgAgentNotFound(id), "")
	}
	return agentToWire(updated), nil
}

// laterTime returns the later of a and b.
func laterTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
