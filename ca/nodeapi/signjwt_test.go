package nodeapi_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/jwtsvid"
	"writ.dev/writ/ca/nodeapi"
)

// TestBatchSignJWTSVID: each request of a batch is authorized and
// checked on its own; a refused one fails no other, and results come in
// request order.
func TestBatchSignJWTSVID(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	e.attest(agentB)
	en := e.createEntry("spiffe://example.org/api", agentA, func(en *entry.Entry) { en.JWTSVIDTTL = 2 * time.Minute })
	plain := e.createEntry("spiffe://example.org/plain", agentA, nil)
	tmpl := e.createEntry("spiffe://example.org/user", agentA, func(en *entry.Entry) {
		en.Template = "spiffe://example.org/user/{{unix.user}}"
	})
	others := e.createEntry("spiffe://example.org/other", agentB, nil)

	tests := []struct {
		name     string
		req      *nodev1.SignJWTSVIDRequest
		code     codes.Code
		id       string
		lifetime time.Duration
	}{
		{name: "own entry", req: &nodev1.SignJWTSVIDRequest{EntryId: en.ID, Audience: []string{"db", "cache"}}, id: "spiffe://example.org/api", lifetime: 2 * time.Minute},
		{name: "other agent's entry", req: &nodev1.SignJWTSVIDRequest{EntryId: others.ID, Audience: []string{"db"}}, code: codes.PermissionDenied},
		{name: "default TTL", req: &nodev1.SignJWTSVIDRequest{EntryId: plain.ID, Audience: []string{"db"}}, id: "spiffe://example.org/plain", lifetime: nodeapi.DefaultJWTSVIDTTL},
		{name: "unknown entry", req: &nodev1.SignJWTSVIDRequest{EntryId: entry.NewID(), Audience: []string{"db"}}, code: codes.PermissionDenied},
		{name: "empty audience", req: &nodev1.SignJWTSVIDRequest{EntryId: en.ID, Audience: []string{"db", ""}}, code: codes.InvalidArgument},
		{name: "no audience", req: &nodev1.SignJWTSVIDRequest{EntryId: en.ID}, code: codes.InvalidArgument},
		{name: "too many audiences", req: &nodev1.SignJWTSVIDRequest{EntryId: en.ID, Audience: slices.Repeat([]string{"a"}, nodeapi.MaxAudiences+1)}, code: codes.InvalidArgument},
		{name: "template filled", req: &nodev1.SignJWTSVIDRequest{EntryId: tmpl.ID, SpiffeId: "spiffe://example.org/user/alice", Audience: []string{"db"}}, id: "spiffe://example.org/user/alice", lifetime: nodeapi.DefaultJWTSVIDTTL},
		{name: "template, an ID it does not fill", req: &nodev1.SignJWTSVIDRequest{EntryId: tmpl.ID, SpiffeId: "spiffe://example.org/admin/alice", Audience: []string{"db"}}, code: codes.PermissionDenied},
		{name: "template, reserved ID", req: &nodev1.SignJWTSVIDRequest{EntryId: tmpl.ID, SpiffeId: "spiffe://example.org/writ/server", Audience: []string{"db"}}, code: codes.PermissionDenied},
		{name: "plain entry, another ID", req: &nodev1.SignJWTSVIDRequest{EntryId: plain.ID, SpiffeId: "spiffe://example.org/api", Audience: []string{"db"}}, code: codes.PermissionDenied},
		{name: "own entry again", req: &nodev1.SignJWTSVIDRequest{EntryId: en.ID, Audience: []string{"x"}}, id: "spiffe://example.org/api", lifetime: 2 * time.Minute},
	}
	in := &nodev1.BatchSignJWTSVIDRequest{}
	for _, tt := range tests {
		in.Requests = append(in.Requests, tt.req)
	}
	resp, err := a.client.BatchSignJWTSVID(ctxT(t), in)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Results) != len(tests) {
		t.Fatalf("%d results for %d requests", len(resp.Results), len(tests))
	}
	now, bundle := e.clock.Now(), e.bundle()
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := resp.Results[i]
			if res.EntryId != tt.req.EntryId {
				t.Fatalf("result %d is for entry %q, want %q", i, res.EntryId, tt.req.EntryId)
			}
			if got := codes.Code(res.Status.GetCode()); got != tt.code {
				t.Fatalf("code %v %q, want %v", got, res.Status.GetMessage(), tt.code)
			}
			if tt.code == codes.PermissionDenied && res.Status.GetMessage() != msgNotAuthorized {
				t.Errorf("message %q", res.Status.GetMessage())
			}
			if tt.code != codes.OK {
				if res.Token != "" {
					t.Error("a refused request carries a token")
				}
				return
			}
			claims, err := jwtsvid.Validate(res.Token, bundle, tt.req.Audience[:1], now)
			if err != nil {
				t.Fatalf("jwtsvid.Validate: %v", err)
			}
			if claims.ID.String() != tt.id || !slices.Equal(claims.Audience, tt.req.Audience) || !claims.Expiry.Equal(now.Add(tt.lifetime)) || res.ExpiresAt != claims.Expiry.Unix() {
				t.Errorf("claims %+v, expires_at %d", claims, res.ExpiresAt)
			}
		})
	}
}

// TestBatchSignJWTSVIDInParallel: a large batch, signed on every CPU,
// gives each request its own token.
func TestBatchSignJWTSVIDInParallel(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	e.attest(agentB)
	var ens []*entry.Entry
	for i := range 4 {
		ens = append(ens, e.createEntry(fmt.Sprintf("spiffe://example.org/w%d", i), agentA, nil))
	}
	others := e.createEntry("spiffe://example.org/other", agentB, nil)
	in := &nodev1.BatchSignJWTSVIDRequest{}
	for i := range nodeapi.MaxBatchSignJWT {
		id := ens[i%len(ens)].ID
		if i%17 == 5 {
			id = others.ID
		}
		in.Requests = append(in.Requests, &nodev1.SignJWTSVIDRequest{EntryId: id, Audience: []string{fmt.Sprintf("aud-%d", i)}})
	}
	resp, err := a.client.BatchSignJWTSVID(ctxT(t), in)
	if err != nil {
		t.Fatal(err)
	}
	now, bundle := e.clock.Now(), e.bundle()
	seen := map[string]bool{}
	for i, res := range resp.Results {
		if i%17 == 5 {
			if codes.Code(res.Status.GetCode()) != codes.PermissionDenied {
				t.Errorf("request %d for another agent's entry: %v", i, res.Status)
			}
			continue
		}
		aud := fmt.Sprintf("aud-%d", i)
		claims, err := jwtsvid.Validate(res.Token, bundle, []string{aud}, now)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if want := ens[i%len(ens)].SPIFFEID; claims.ID != want {
			t.Errorf("request %d: subject %s, want %s", i, claims.ID, want)
		}
		if seen[res.Token] {
			t.Errorf("request %d: token repeated", i)
		}
		seen[res.Token] = true
	}

	in.Requests = append(in.Requests, in.Requests[0])
	_, err = a.client.BatchSignJWTSVID(ctxT(t), in)
	wantCode(t, err, codes.InvalidArgument, fmt.Sprintf("too many requests: %d (at most %d)", nodeapi.MaxBatchSignJWT+1, nodeapi.MaxBatchSignJWT))
}
