package admin_test

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"writ.dev/writ/ca/admin"
	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/jwtsvid"
	"writ.dev/writ/internal/logkey"
)

func TestOAuthClients(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := adminv1.NewOAuthServiceClient(e.conn)
	ctx := ctxT(t)
	const web = "spiffe://example.org/web"

	got, err := c.CreateOAuthClient(ctx, &adminv1.OAuthClient{SpiffeId: web, Audiences: []string{"orders", "api", "orders"}, Scopes: []string{"write", "read"}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.GetAudiences(), []string{"api", "orders"}) || !slices.Equal(got.GetScopes(), []string{"read", "write"}) || got.GetCreatedAt() != startTime.Unix() {
		t.Fatalf("created %v", got)
	}
	if recs := e.logs.audit(adminv1.OAuthService_CreateOAuthClient_FullMethodName); len(recs) != 1 || recs[0].attrs[logkey.SPIFFEID].String() != web {
		t.Fatalf("audit records %+v", recs)
	}
	if _, err := c.CreateOAuthClient(ctx, &adminv1.OAuthClient{SpiffeId: web, Audiences: []string{"x"}}); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("second create: %v", err)
	}
	e.clock.Advance(time.Minute)
	got, err = c.UpdateOAuthClient(ctx, &adminv1.OAuthClient{SpiffeId: web, Audiences: []string{"orders"}})
	if err != nil || !slices.Equal(got.GetAudiences(), []string{"orders"}) || len(got.GetScopes()) != 0 || got.GetCreatedAt() != startTime.Unix() || got.GetUpdatedAt() != startTime.Add(time.Minute).Unix() {
		t.Fatalf("update: %v %v", got, err)
	}
	stored, err := e.store.(admin.OAuthStore).FetchOAuthClient(ctx, mustID(t, web))
	if err != nil || !slices.Equal(stored.Audiences, []string{"orders"}) || stored.Scopes != nil {
		t.Fatalf("stored %+v %v", stored, err)
	}

	for name, req := range map[string]*adminv1.OAuthClient{
		"no audience":          {SpiffeId: web},
		"another trust domain": {SpiffeId: "spiffe://other.test/web", Audiences: []string{"a"}},
		"bad SPIFFE ID":        {SpiffeId: "spiffe://example.org/a//b", Audiences: []string{"a"}},
		"scope with a space":   {SpiffeId: web, Audiences: []string{"a"}, Scopes: []string{"a b"}},
		"audience with a tab":  {SpiffeId: web, Audiences: []string{"a\tb"}},
	} {
		if _, err := c.UpdateOAuthClient(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := c.UpdateOAuthClient(ctx, &adminv1.OAuthClient{SpiffeId: "spiffe://example.org/none", Audiences: []string{"a"}}); status.Code(err) != codes.NotFound {
		t.Fatalf("update of an unknown client: %v", err)
	}
	list, err := c.ListOAuthClients(ctx, &adminv1.ListOAuthClientsRequest{})
	if err != nil || len(list.GetClients()) != 1 || list.GetClients()[0].GetSpiffeId() != web {
		t.Fatalf("list: %v %v", list, err)
	}
	if _, err := c.DeleteOAuthClient(ctx, &adminv1.GetOAuthClientRequest{SpiffeId: web}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetOAuthClient(ctx, &adminv1.GetOAuthClientRequest{SpiffeId: web}); status.Code(err) != codes.NotFound {
		t.Fatalf("get after delete: %v", err)
	}
	if _, err := c.DeleteOAuthClient(ctx, &adminv1.GetOAuthClientRequest{SpiffeId: web}); status.Code(err) != codes.NotFound {
		t.Fatalf("second delete: %v", err)
	}
}

func TestRevokeOAuthTokens(t *testing.T) {
	e := newEnv(t, envOptions{cfg: func(c *admin.Config) { c.OAuthTokenTTL = 10 * time.Minute }})
	c := adminv1.NewOAuthServiceClient(e.conn)
	ctx := ctxT(t)
	r, err := c.RevokeOAuthTokens(ctx, &adminv1.RevokeOAuthTokensRequest{ClientId: "spiffe://example.org/web"})
	if err != nil {
		t.Fatal(err)
	}
	// Kept until the client's longest JWT-SVID, or the longest token of
	// any server, has expired, not only this server's 10-minute tokens.
	// Stamped a leeway ahead, for issuers whose clocks run ahead.
	revokedAt := startTime.Add(jwtsvid.Leeway)
	if want := revokedAt.Add(entry.MaxTTL + 2*jwtsvid.Leeway).Unix(); r.GetExpiresAt() != want || r.GetRevokedAt() != revokedAt.Unix() {
		t.Fatalf("revocation %v", r)
	}
	if _, err := c.RevokeOAuthTokens(ctx, &adminv1.RevokeOAuthTokensRequest{Jti: "abc"}); err != nil {
		t.Fatal(err)
	}
	revs, err := e.store.(interface {
		ListRevocations(ctx context.Context, now time.Time) ([]*datastore.Revocation, error)
	}).ListRevocations(ctx, startTime)
	if err != nil || len(revs) != 2 || revs[0].ClientID != "spiffe://example.org/web" || revs[1].JTI != "abc" {
		t.Fatalf("stored revocations %+v %v", revs, err)
	}
	if recs := e.logs.audit(adminv1.OAuthService_RevokeOAuthTokens_FullMethodName); len(recs) != 2 {
		t.Fatalf("audit records %+v", recs)
	}
	for name, req := range map[string]*adminv1.RevokeOAuthTokensRequest{
		"neither":              {},
		"both":                 {Jti: "a", ClientId: "spiffe://example.org/web"},
		"client of another TD": {ClientId: "spiffe://other.test/web"},
		"jti with a space":     {Jti: "a b"},
	} {
		if _, err := c.RevokeOAuthTokens(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func mustID(t *testing.T, s string) spiffeid.ID {
	t.Helper()
	id, err := spiffeid.FromString(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestAuditNamesRevocation: the audit record of a revocation names what it
// revokes, a jti as a client ID is: an operator reading the log can tell
// which token was revoked, and by whom.
func TestAuditNamesRevocation(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := adminv1.NewOAuthServiceClient(e.conn)
	if _, err := c.RevokeOAuthTokens(ctxT(t), &adminv1.RevokeOAuthTokensRequest{Jti: "tok-42"}); err != nil {
		t.Fatal(err)
	}
	recs := e.logs.audit(adminv1.OAuthService_RevokeOAuthTokens_FullMethodName)
	if len(recs) != 1 {
		t.Fatalf("audit records %+v", recs)
	}
	if got := recs[0].attrs["jti"].String(); got != "tok-42" {
		t.Errorf("audit record %+v names no jti (got %q)", recs[0].attrs, got)
	}
	if recs[0].attrs["uid"].Uint64() != uint64(os.Getuid()) {
		t.Errorf("audit record %+v does not name the caller", recs[0].attrs)
	}
}
