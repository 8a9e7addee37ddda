package admin

import (
	"context"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/attest/jointoken"
	"writ.dev/writ/ca/datastore"
)

// joinTokenService serves adminv1.JoinTokenService.
type joinTokenService struct {
	adminv1.UnimplementedJoinTokenServiceServer
	s *Service
}

// GenerateJoinToken makes a one-time token for an agent to attest as
// spiffe_id, which must be under /writ/agent/, and stores its hash. The token is in the response only: it is
// never stored or logged.
func (js *joinTokenService) GenerateJoinToken(ctx context.Context, req *adminv1.GenerateJoinTokenRequest) (*adminv1.GenerateJoinTokenResponse, error) {
	s := js.s
	c, err := s.begin(ctx)
	if err != nil {
		return nil, err
	}
	id, err := s.parseAgentID("spiffe_id", req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	c.spiffeID = id.String()
	ttl := s.joinTokenTTL
	if req.GetTtl() != 0 {
		if ttl, err = parseTTL("ttl", req.GetTtl()); err != nil {
			return nil, err
		}
	}
	now := s.clock.Now()
	token := jointoken.New()
	t := &datastore.JoinToken{
		Hash:      jointoken.Hash(token),
		SPIFFEID:  id,
		ExpiresAt: now.Add(ttl),
		CreatedAt: now,
	}
	// ErrAlreadyExists would mean two random 256-bit tokens collided:
	// internal like any other failure.
	if err := s.store.CreateJoinToken(ctx, t); err != nil {
		return nil, s.internal(ctx, "create join token", err)
	}
	return &adminv1.GenerateJoinTokenResponse{
		Token:     token,
		SpiffeId:  id.String(),
		ExpiresAt: t.ExpiresAt.Unix(),
	}, nil
}
