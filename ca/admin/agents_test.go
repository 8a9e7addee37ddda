package admin_test

import (
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/datastore"
)

const (
	agent2ID  = "spiffe://example.org/writ/agent/node2"
	unknownID = "spiffe://example.org/writ/agent/none"
)

// seedAgents stores two agents and returns them as the API shows them.
func (e *env) seedAgents(t *testing.T) []*adminv1.Agent {
	t.Helper()
	var out []*adminv1.Agent
	for i, id := range []string{agentID, agent2ID} {
		a := &datastore.Agent{
			SPIFFEID:        spiffeid.RequireFromString(id),
			AttestationType: "join_token",
			SerialNumber:    "12345",
			CertNotAfter:    startTime.Add(time.Hour),
			Banned:          i == 1,
			CreatedAt:       startTime.Add(-time.Hour),
			UpdatedAt:       startTime.Add(-time.Minute),
		}
		if err := e.store.CreateAgent(ctxT(t), a); err != nil {
			t.Fatal(err)
		}
		out = append(out, &adminv1.Agent{
			SpiffeId:        id,
			AttestationType: "join_token",
			SerialNumber:    "12345",
			CertNotAfter:    a.CertNotAfter.Unix(),
			Banned:          a.Banned,
			CreatedAt:       a.CreatedAt.Unix(),
			UpdatedAt:       a.UpdatedAt.Unix(),
		})
	}
	return out
}

func agentsEqual(a, b *adminv1.Agent) bool {
	return a.GetSpiffeId() == b.GetSpiffeId() && a.GetAttestationType() == b.GetAttestationType() &&
		a.GetSerialNumber() == b.GetSerialNumber() && a.GetCertNotAfter() == b.GetCertNotAfter() &&
		a.GetBanned() == b.GetBanned() && a.GetCreatedAt() == b.GetCreatedAt() && a.GetUpdatedAt() == b.GetUpdatedAt()
}

func TestListAgents(t *testing.T) {
	e := newEnv(t, envOptions{})
	resp, err := e.agents.ListAgents(ctxT(t), &adminv1.ListAgentsRequest{})
	if err != nil || len(resp.GetAgents()) != 0 {
		t.Fatalf("ListAgents with none = %v, %v", resp, err)
	}
	want := e.seedAgents(t)
	resp, err = e.agents.ListAgents(ctxT(t), &adminv1.ListAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := make(map[string]*adminv1.Agent)
	for _, a := range resp.GetAgents() {
		got[a.GetSpiffeId()] = a
	}
	if len(got) != len(want) {
		t.Fatalf("ListAgents = %v, want %v", resp.GetAgents(), want)
	}
	for _, w := range want {
		if !agentsEqual(got[w.GetSpiffeId()], w) {
			t.Errorf("agent %v, want %v", got[w.GetSpiffeId()], w)
		}
	}
}

// agentIDCases are the inputs every per-agent RPC must handle.
func agentIDCases() []struct {
	name string
	id   string
	want codes.Code
} {
	type tc = struct {
		name string
		id   string
		want codes.Code
	}
	tests := []tc{
		{"unknown", unknownID, codes.NotFound},
		{"server's own ID", "spiffe://example.org/writ/server", codes.NotFound},
	}
	for _, b := range badIDs {
		tests = append(tests, tc{b.name, b.id, codes.InvalidArgument})
	}
	return tests
}

func TestGetAgent(t *testing.T) {
	e := newEnv(t, envOptions{})
	want := e.seedAgents(t)
	got, err := e.agents.GetAgent(ctxT(t), &adminv1.GetAgentRequest{SpiffeId: agentID})
	if err != nil || !agentsEqual(got, want[0]) {
		t.Errorf("GetAgent = %v, %v; want %v", got, err, want[0])
	}
	for _, tt := range agentIDCases() {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.agents.GetAgent(ctxT(t), &adminv1.GetAgentRequest{SpiffeId: tt.id})
			if status.Code(err) != tt.want {
				t.Fatalf("GetAgent: %v, want %v", err, tt.want)
			}
			if tt.want == codes.InvalidArgument {
				checkMessage(t, status.Convert(err).Message(), "spiffe_id")
			}
		})
	}
}

func TestEvictAgent(t *testing.T) {
	e := newEnv(t, envOptions{})
	want := e.seedAgents(t)
	got, err := e.agents.EvictAgent(ctxT(t), &adminv1.EvictAgentRequest{SpiffeId: agentID})
	if err != nil || !agentsEqual(got, want[0]) {
		t.Fatalf("EvictAgent = %v, %v; want %v", got, err, want[0])
	}
	if _, err := e.agents.GetAgent(ctxT(t), &adminv1.GetAgentRequest{SpiffeId: agentID}); status.Code(err) != codes.NotFound {
		t.Errorf("GetAgent after evict: %v, want NotFound", err)
	}
	if _, err := e.agents.EvictAgent(ctxT(t), &adminv1.EvictAgentRequest{SpiffeId: agentID}); status.Code(err) != codes.NotFound {
		t.Errorf("second EvictAgent: %v, want NotFound", err)
	}
	if _, err := e.agents.GetAgent(ctxT(t), &adminv1.GetAgentRequest{SpiffeId: agent2ID}); err != nil {
		t.Errorf("other agent after evict: %v", err)
	}
	for _, tt := range agentIDCases() {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.agents.EvictAgent(ctxT(t), &adminv1.EvictAgentRequest{SpiffeId: tt.id})
			if status.Code(err) != tt.want {
				t.Fatalf("EvictAgent: %v, want %v", err, tt.want)
			}
		})
	}
}

func TestBanUnbanAgent(t *testing.T) {
	e := newEnv(t, envOptions{})
	want := e.seedAgents(t)[0]
	ban := func(id string) (*adminv1.Agent, error) {
		return e.agents.BanAgent(ctxT(t), &adminv1.BanAgentRequest{SpiffeId: id})
	}
	unban := func(id string) (*adminv1.Agent, error) {
		return e.agents.UnbanAgent(ctxT(t), &adminv1.UnbanAgentRequest{SpiffeId: id})
	}
	steps := []struct {
		name   string
		call   func(string) (*adminv1.Agent, error)
		banned bool
	}{
		{"ban", ban, true},
		{"ban again", ban, true},
		{"unban", unban, false},
		{"unban again", unban, false},
	}
	for i, st := range steps {
		e.clock.Advance(time.Minute)
		got, err := st.call(agentID)
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		w := proto.CloneOf(want)
		w.Banned = st.banned
		w.UpdatedAt = startTime.Add(time.Duration(i+1) * time.Minute).Unix()
		if !agentsEqual(got, w) {
			t.Errorf("%s = %v, want %v", st.name, got, w)
		}
		stored, err := e.agents.GetAgent(ctxT(t), &adminv1.GetAgentRequest{SpiffeId: agentID})
		if err != nil || !agentsEqual(stored, w) {
			t.Errorf("%s: stored %v, %v; want %v", st.name, stored, err, w)
		}
	}
	// A later UpdatedAt (stored by a server whose clock runs ahead) is
	// kept: it never moves backwards.
	ahead := e.clock.Now().Add(time.Hour).Truncate(time.Second)
	if _, err := e.store.UpdateAgent(ctxT(t), spiffeid.RequireFromString(agentID), func(a *datastore.Agent) error { a.UpdatedAt = ahead; return nil }); err != nil {
		t.Fatal(err)
	}
	for _, call := range []func(string) (*adminv1.Agent, error){ban, unban} {
		got, err := call(agentID)
		if err != nil {
			t.Fatal(err)
		}
		if got.UpdatedAt != ahead.Unix() {
			t.Errorf("UpdatedAt = %d, want the later %d kept", got.UpdatedAt, ahead.Unix())
		}
	}
	for _, tt := range agentIDCases() {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ban(tt.id); status.Code(err) != tt.want {
				t.Errorf("BanAgent: %v, want %v", err, tt.want)
			}
			if _, err := unban(tt.id); status.Code(err) != tt.want {
				t.Errorf("UnbanAgent: %v, want %v", err, tt.want)
			}
		})
	}
}
