package admin

import (
	"context"
	"errors"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/jwtsvid"
)

// DefaultOAuthTokenTTL is the longest lifetime of an OAuth access token
// when Config.OAuthTokenTTL is zero: revocations are kept that long.
const DefaultOAuthTokenTTL = 5 * time.Minute

// OAuthStore is the part of datastore.Store OAuthService uses.
type OAuthStore interface {
	PutOAuthClient(ctx context.Context, c *datastore.OAuthClient) error
	FetchOAuthClient(ctx context.Context, id spiffeid.ID) (*datastore.OAuthClient, error)
	ListOAuthClients(ctx context.Context) ([]*datastore.OAuthClient, error)
	DeleteOAuthClient(ctx context.Context, id spiffeid.ID) error
	PutRevocation(ctx context.Context, r *datastore.Revocation) error
}

// oauthService serves adminv1.OAuthService.
type oauthService struct {
	adminv1.UnimplementedOAuthServiceServer
	s *Service
}

func (o *oauthService) store() (OAuthStore, error) {
	st, ok := o.s.store.(OAuthStore)
	if !ok {
		return nil, status.Error(codes.Unimplemented, "this server's datastore keeps no OAuth clients")
	}
	return st, nil
}

// oauthClientFromWire parses and checks a client from a request.
func (s *Service) oauthClientFromWire(req *adminv1.OAuthClient) (*datastore.OAuthClient, error) {
	id, err := s.parseID("SPIFFE ID", req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	c := &datastore.OAuthClient{SPIFFEID: id, Audiences: datastore.SortedUnique(req.GetAudiences()), Scopes: datastore.SortedUnique(req.GetScopes())}
	if len(c.Scopes) == 0 {
		c.Scopes = nil
	}
	if err := datastore.CheckOAuthClient(c); err != nil {
		return nil, invalidf("%s", entry.Printable(errors.Unwrap(err).Error()))
	}
	return c, nil
}

func oauthClientToWire(c *datastore.OAuthClient) *adminv1.OAuthClient {
	return &adminv1.OAuthClient{SpiffeId: c.SPIFFEID.String(), Audiences: c.Audiences, Scopes: c.Scopes,
		CreatedAt: unixSeconds(c.CreatedAt), UpdatedAt: unixSeconds(c.UpdatedAt)}
}

// clientCall starts a call that writes the client req: the call's audit
// record names it, and it is checked and converted.
func (o *oauthService) clientCall(ctx context.Context, req *adminv1.OAuthClient) (OAuthStore, *datastore.OAuthClient, error) {
	c, err := o.s.begin(ctx)
	if err != nil {
		return nil, nil, err
	}
	st, err := o.store()
	if err != nil {
		return nil, nil, err
	}
	cl, err := o.s.oauthClientFromWire(req)
	if err != nil {
		return nil, nil, err
	}
	c.spiffeID = cl.SPIFFEID.String()
	return st, cl, nil
}

// CreateOAuthClient creates a client.
func (o *oauthService) CreateOAuthClient(ctx context.Context, req *adminv1.OAuthClient) (*adminv1.OAuthClient, error) {
	s := o.s
	st, cl, err := o.clientCall(ctx, req)
	if err != nil {
		return nil, err
	}
	if _, err := st.FetchOAuthClient(ctx, cl.SPIFFEID); err == nil {
		return nil, status.Errorf(codes.AlreadyExists, "%s already is an OAuth client; update it", cl.SPIFFEID)
	} else if !errors.Is(err, datastore.ErrNotFound) {
		return nil, s.internal(ctx, "fetch oauth client", err)
	}
	now := s.clock.Now()
	cl.CreatedAt, cl.UpdatedAt = now, now
	if err := st.PutOAuthClient(ctx, cl); err != nil {
		return nil, s.internal(ctx, "put oauth client", err)
	}
	return oauthClientToWire(cl), nil
}

// UpdateOAuthClient replaces a client's audiences and scopes.
func (o *oauthService) UpdateOAuthClient(ctx context.Context, req *adminv1.OAuthClient) (*adminv1.OAuthClient, error) {
	s := o.s
	st, cl, err := o.clientCall(ctx, req)
	if err != nil {
		return nil, err
	}
	old, err := st.FetchOAuthClient(ctx, cl.SPIFFEID)
	if err != nil {
		return nil, s.storeError(ctx, "fetch oauth client", err, cl.SPIFFEID.String()+" is not an OAuth client", "")
	}
	cl.CreatedAt, cl.UpdatedAt = old.CreatedAt, s.clock.Now()
	if err := st.PutOAuthClient(ctx, cl); err != nil {
		return nil, s.internal(ctx, "put oauth client", err)
	}
	return oauthClientToWire(cl), nil
}

// GetOAuthClient returns one client.
func (o *oauthService) GetOAuthClient(ctx context.Context, req *adminv1.GetOAuthClientRequest) (*adminv1.OAuthClient, error) {
	s := o.s
	if _, err := s.begin(ctx); err != nil {
		return nil, err
	}
	st, err := o.store()
	if err != nil {
		return nil, err
	}
	id, err := s.parseID("SPIFFE ID", req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	cl, err := st.FetchOAuthClient(ctx, id)
	if err != nil {
		return nil, s.storeError(ctx, "fetch oauth client", err, id.String()+" is not an OAuth client", "")
	}
	return oauthClientToWire(cl), nil
}

// ListOAuthClients lists the clients.
func (o *oauthService) ListOAuthClients(ctx context.Context, _ *adminv1.ListOAuthClientsRequest) (*adminv1.ListOAuthClientsResponse, error) {
	s := o.s
	if _, err := s.begin(ctx); err != nil {
		return nil, err
	}
	st, err := o.store()
	if err != nil {
		return nil, err
	}
	all, err := st.ListOAuthClients(ctx)
	if err != nil {
		return nil, s.internal(ctx, "list oauth clients", err)
	}
	resp := &adminv1.ListOAuthClientsResponse{}
	for _, cl := range all {
		resp.Clients = append(resp.Clients, oauthClientToWire(cl))
	}
	return resp, nil
}

// DeleteOAuthClient deletes a client. Tokens it holds stay valid until
// they expire or are revoked.
func (o *oauthService) DeleteOAuthClient(ctx context.Context, req *adminv1.GetOAuthClientRequest) (*adminv1.OAuthClient, error) {
	s := o.s
	c, err := s.begin(ctx)
	if err != nil {
		return nil, err
	}
	st, err := o.store()
	if err != nil {
		return nil, err
	}
	id, err := s.parseID("SPIFFE ID", req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	c.spiffeID = id.String()
	cl, err := st.FetchOAuthClient(ctx, id)
	if err != nil {
		return nil, s.storeError(ctx, "fetch oauth client", err, id.String()+" is not an OAuth client", "")
	}
	if err := st.DeleteOAuthClient(ctx, id); err != nil {
		return nil, s.storeError(ctx, "delete oauth client", err, id.String()+" is not an OAuth client", "")
	}
	return oauthClientToWire(cl), nil
}

// RevokeOAuthTokens revokes a token by jti, or a client's tokens. The
// revocation is kept until every token it can match has expired: the
// longest lifetime of any of them, plus the leeway validators allow past
// exp. Agents apply a client revocation to the client's JWT-SVIDs too,
// which live up to entry.MaxTTL, and every server of the trust domain
// caps its access tokens there (oauth.MaxTokenTTL), whatever this
// server's own token TTL: so the longest lifetime is the larger of
// entry.MaxTTL and Config.OAuthTokenTTL. For clock skew between servers,
// RevokedAt is now plus jwtsvid.Leeway, and ExpiresAt is RevokedAt plus
// that lifetime plus twice the leeway.
func (o *oauthService) RevokeOAuthTokens(ctx context.Context, req *adminv1.RevokeOAuthTokensRequest) (*adminv1.OAuthRevocation, error) {
	s := o.s
	c, err := s.begin(ctx)
	if err != nil {
		return nil, err
	}
	st, err := o.store()
	if err != nil {
		return nil, err
	}
	now := s.clock.Now()
	// RevokedAt is stamped Leeway ahead: tokens carry the iat of the
	// server that issued them, whose clock may run ahead of this one, so
	// a token issued just before the revocation could otherwise carry a
	// later iat and escape it. The price: the client's tokens issued in
	// the Leeway after the revocation are revoked too. The record is kept
	// twice the leeway past the longest lifetime, for validators' and
	// pruners' clocks.
	revokedAt := now.Add(jwtsvid.Leeway)
	r := &datastore.Revocation{JTI: req.GetJti(), RevokedAt: revokedAt, ExpiresAt: revokedAt.Add(max(entry.MaxTTL, s.oauthTokenTTL) + 2*jwtsvid.Leeway)}
	switch {
	case (req.GetJti() == "") == (req.GetClientId() == ""):
		return nil, invalidf("give exactly one of a jti and a client ID")
	case req.GetClientId() != "":
		id, err := s.parseID("client ID", req.GetClientId())
		if err != nil {
			return nil, err
		}
		r.ClientID = id.String()
		c.spiffeID = r.ClientID
	case !datastore.ValidAudience(req.GetJti()):
		return nil, invalidf("the jti must be printable ASCII without spaces, at most %d bytes", datastore.MaxOAuthValueLength)
	default:
		c.jti = r.JTI // checked: printable ASCII, bounded
	}
	if err := st.PutRevocation(ctx, r); err != nil {
		return nil, s.internal(ctx, "put revocation", err)
	}
	return &adminv1.OAuthRevocation{Jti: r.JTI, ClientId: r.ClientID, RevokedAt: unixSeconds(r.RevokedAt), ExpiresAt: unixSeconds(r.ExpiresAt)}, nil
}
