package nodeapi_test

import (
	"context"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	gojwtsvid "github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

// TestSignTemplate: for a template entry the server signs the ID the
// agent filled in only if it conforms to the template; a plain entry
// issues only its own ID.
func TestSignTemplate(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	b := e.attest(agentB)
	tmpl := e.createEntry("spiffe://example.org/user", agentA, func(en *entry.Entry) {
		en.Template = "spiffe://example.org/user/{{unix.user}}"
	})
	plain := e.createEntry("spiffe://example.org/plain", agentA, nil)
	tests := []struct {
		name     string
		entryID  string
		spiffeID string
		code     codes.Code
	}{
		{name: "filled", entryID: tmpl.ID, spiffeID: "spiffe://example.org/user/alice", code: codes.OK},
		{name: "no filled ID", entryID: tmpl.ID, code: codes.PermissionDenied},
		{name: "template prefix", entryID: tmpl.ID, spiffeID: "spiffe://example.org/user", code: codes.PermissionDenied},
		{name: "deeper", entryID: tmpl.ID, spiffeID: "spiffe://example.org/user/alice/x", code: codes.PermissionDenied},
		{name: "other prefix", entryID: tmpl.ID, spiffeID: "spiffe://example.org/admin/alice", code: codes.PermissionDenied},
		{name: "reserved", entryID: tmpl.ID, spiffeID: "spiffe://example.org/writ/server", code: codes.PermissionDenied},
		{name: "not canonical", entryID: tmpl.ID, spiffeID: "spiffe://example.org/user/%61", code: codes.PermissionDenied},
		{name: "other domain", entryID: tmpl.ID, spiffeID: "spiffe://other.org/user/alice", code: codes.PermissionDenied},
		{name: "plain own ID", entryID: plain.ID, spiffeID: "spiffe://example.org/plain", code: codes.OK},
		{name: "plain other ID", entryID: plain.ID, spiffeID: "spiffe://example.org/user/alice", code: codes.PermissionDenied},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := a.client.BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{Requests: []*nodev1.X509SVIDRequest{
				{EntryId: tc.entryID, SpiffeId: tc.spiffeID, Csr: newCSR(t, newKey(t))},
			}})
			if err != nil {
				t.Fatal(err)
			}
			res := resp.Results[0]
			if got := codes.Code(res.Status.GetCode()); got != tc.code {
				t.Fatalf("code %v %q, want %v", got, res.Status.GetMessage(), tc.code)
			}
			if tc.code != codes.OK {
				return
			}
			id, _, err := x509svid.ParseAndVerify(res.SvidChain, e.bundle(), x509svid.WithTime(e.clock.Now()))
			if err != nil {
				t.Fatal(err)
			}
			want := tc.spiffeID
			if id.String() != want {
				t.Errorf("SVID for %s, want %s", id, want)
			}
		})
	}

	// JWT-SVIDs: the same rule.
	resp, err := a.client.SignJWTSVID(ctxT(t), &nodev1.SignJWTSVIDRequest{EntryId: tmpl.ID, SpiffeId: "spiffe://example.org/user/alice", Audience: []string{"db"}})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := gojwtsvid.ParseInsecure(resp.Token, []string{"db"})
	if err != nil {
		t.Fatal(err)
	}
	if tok.ID != spiffeid.RequireFromString("spiffe://example.org/user/alice") {
		t.Errorf("JWT-SVID for %s", tok.ID)
	}
	_, err = a.client.SignJWTSVID(ctxT(t), &nodev1.SignJWTSVIDRequest{EntryId: tmpl.ID, SpiffeId: "spiffe://example.org/other/alice", Audience: []string{"db"}})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("non-conforming JWT-SVID: %v", err)
	}
	// Another agent cannot use the template.
	resp2, err := b.client.BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{Requests: []*nodev1.X509SVIDRequest{
		{EntryId: tmpl.ID, SpiffeId: "spiffe://example.org/user/alice", Csr: newCSR(t, newKey(t))},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if codes.Code(resp2.Results[0].Status.GetCode()) != codes.PermissionDenied {
		t.Error("another agent had a template ID signed")
	}
}

// TestReportTemplates: an agent's report is kept while its Sync stream
// is open, holds only its own templates and conforming IDs, and goes
// with the stream.
func TestReportTemplates(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	tmpl := e.createEntry("spiffe://example.org/user", agentA, func(en *entry.Entry) {
		en.Template = "spiffe://example.org/user/{{unix.user}}"
	})
	plain := e.createEntry("spiffe://example.org/plain", agentA, nil)
	ctx, cancel := context.WithCancel(ctxT(t))
	stream, err := a.client.Sync(ctx, &nodev1.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	_, err = a.client.ReportTemplates(ctxT(t), &nodev1.ReportTemplatesRequest{Templates: []*nodev1.TemplateReport{
		{EntryId: tmpl.ID, SpiffeIds: []string{"spiffe://example.org/user/alice", "spiffe://example.org/admin/x"}, Count: 2},
		{EntryId: plain.ID, SpiffeIds: []string{"spiffe://example.org/plain"}},
		{EntryId: entry.NewID(), SpiffeIds: []string{"spiffe://example.org/user/bob"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	got := e.svc.TemplateIssued(tmpl.ID)
	if len(got) != 1 || got[0].AgentID.String() != agentA || len(got[0].SPIFFEIDs) != 1 || got[0].SPIFFEIDs[0] != "spiffe://example.org/user/alice" {
		t.Fatalf("TemplateIssued = %+v", got)
	}
	if got := e.svc.TemplateIssued(plain.ID); len(got) != 0 {
		t.Errorf("a plain entry has a report: %+v", got)
	}
	cancel()
	deadline := time.Now().Add(10 * time.Second)
	for len(e.svc.TemplateIssued(tmpl.ID)) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the report outlived the agent's Sync stream")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSignTemplateNodeFields: the node.* placeholders of a template are
// filled from the node selectors the server recorded for the calling
// agent; an agent cannot have another node's values signed.
func TestSignTemplateNodeFields(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	if _, err := e.store.UpdateAgent(context.Background(), a.id, func(ag *datastore.Agent) error {
		ag.Selectors = []entry.Selector{{Type: "x509pop", Value: "subject:cn:web1"}}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	tmpl := e.createEntry("spiffe://example.org/node", agentA, func(en *entry.Entry) {
		en.Template = "spiffe://example.org/node/{{node.x509pop.subject.cn}}/{{unix.user}}"
	})
	sign := func(id string) codes.Code {
		resp, err := a.client.BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{Requests: []*nodev1.X509SVIDRequest{
			{EntryId: tmpl.ID, SpiffeId: id, Csr: newCSR(t, newKey(t))},
		}})
		if err != nil {
			t.Fatal(err)
		}
		return codes.Code(resp.Results[0].Status.GetCode())
	}
	eventually(t, "own node value signed", func() bool { return sign("spiffe://example.org/node/web1/alice") == codes.OK })
	if got := sign("spiffe://example.org/node/web2/alice"); got != codes.PermissionDenied {
		t.Errorf("another node's value: %v, want PermissionDenied", got)
	}
	_, err := a.client.SignJWTSVID(ctxT(t), &nodev1.SignJWTSVIDRequest{EntryId: tmpl.ID, SpiffeId: "spiffe://example.org/node/web2/alice", Audience: []string{"db"}})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("another node's value, JWT-SVID: %v, want PermissionDenied", err)
	}
}
