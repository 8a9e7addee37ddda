package admin_test

import (
	"errors"
	"math"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"writ.dev/writ/ca/admin"
	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/attest/jointoken"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

func TestGenerateJoinToken(t *testing.T) {
	e := newEnv(t, envOptions{cfg: func(c *admin.Config) { c.DefaultJoinTokenTTL = 0 }})
	tests := []struct {
		name string
		ttl  int64
		want time.Duration
	}{
		{"default", 0, admin.DefaultJoinTokenTTL},
		{"minimum", 1, time.Second},
		{"hour", 3600, time.Hour},
		{"maximum", int64(entry.MaxTTL / time.Second), entry.MaxTTL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := e.tokens.GenerateJoinToken(ctxT(t), &adminv1.GenerateJoinTokenRequest{SpiffeId: agentID, Ttl: tt.ttl})
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.GetToken()) != jointoken.Length {
				t.Errorf("token %q has length %d, want %d", resp.GetToken(), len(resp.GetToken()), jointoken.Length)
			}
			if resp.GetSpiffeId() != agentID {
				t.Errorf("spiffe_id %q, want %q", resp.GetSpiffeId(), agentID)
			}
			if want := startTime.Add(tt.want).Unix(); resp.GetExpiresAt() != want {
				t.Errorf("expires_at %d, want %d", resp.GetExpiresAt(), want)
			}
			// The store knows the token only by its hash.
			if _, err := e.store.ConsumeJoinToken(ctxT(t), resp.GetToken(), startTime); !errors.Is(err, datastore.ErrNotFound) {
				t.Errorf("token stored in the clear: ConsumeJoinToken(token) = %v", err)
			}
			got, err := e.store.ConsumeJoinToken(ctxT(t), jointoken.Hash(resp.GetToken()), startTime)
			if err != nil {
				t.Fatalf("ConsumeJoinToken(hash): %v", err)
			}
			if got.SPIFFEID.String() != agentID || !got.ExpiresAt.Equal(startTime.Add(tt.want)) || !got.CreatedAt.Equal(startTime) {
				t.Errorf("stored token %+v", got)
			}
		})
	}

	a, err := e.tokens.GenerateJoinToken(ctxT(t), &adminv1.GenerateJoinTokenRequest{SpiffeId: agentID})
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.tokens.GenerateJoinToken(ctxT(t), &adminv1.GenerateJoinTokenRequest{SpiffeId: agentID})
	if err != nil {
		t.Fatal(err)
	}
	if a.GetToken() == b.GetToken() {
		t.Error("two tokens are the same")
	}
}

func TestGenerateJoinTokenConfiguredDefault(t *testing.T) {
	e := newEnv(t, envOptions{cfg: func(c *admin.Config) { c.DefaultJoinTokenTTL = time.Hour }})
	resp, err := e.tokens.GenerateJoinToken(ctxT(t), &adminv1.GenerateJoinTokenRequest{SpiffeId: agentID})
	if err != nil {
		t.Fatal(err)
	}
	if want := startTime.Add(time.Hour).Unix(); resp.GetExpiresAt() != want {
		t.Errorf("expires_at %d, want %d", resp.GetExpiresAt(), want)
	}
}

func TestGenerateJoinTokenInvalid(t *testing.T) {
	e := newEnv(t, envOptions{})
	type tc struct {
		name  string
		req   *adminv1.GenerateJoinTokenRequest
		field string
	}
	var tests []tc
	for _, b := range badIDs {
		tests = append(tests, tc{"spiffe_id " + b.name, &adminv1.GenerateJoinTokenRequest{SpiffeId: b.id}, "spiffe_id"})
	}
	for _, b := range badTTLs {
		tests = append(tests, tc{"ttl " + b.name, &adminv1.GenerateJoinTokenRequest{SpiffeId: agentID, Ttl: b.ttl}, "ttl"})
	}
	tests = append(tests,
		tc{"server's own ID", &adminv1.GenerateJoinTokenRequest{SpiffeId: admin.ServerID(td).String()}, "spiffe_id"},
		// Agents live under /writ/agent/, where no workload entry can be.
		tc{"a workload path", &adminv1.GenerateJoinTokenRequest{SpiffeId: "spiffe://example.org/host/node1"}, "spiffe_id"},
		tc{"the agent path itself", &adminv1.GenerateJoinTokenRequest{SpiffeId: "spiffe://example.org/writ/agent"}, "spiffe_id"},
		tc{"another reserved path", &adminv1.GenerateJoinTokenRequest{SpiffeId: "spiffe://example.org/writ/agentx/a"}, "spiffe_id"},
		tc{"ttl min int", &adminv1.GenerateJoinTokenRequest{SpiffeId: agentID, Ttl: math.MinInt64 + 1}, "ttl"},
	)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := e.tokens.GenerateJoinToken(ctxT(t), tt.req)
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("GenerateJoinToken = %v, %v; want InvalidArgument", resp, err)
			}
			checkMessage(t, status.Convert(err).Message(), tt.field)
		})
	}
}
