package admin_test

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
)

func templateEntry(tmpl string) *adminv1.Entry {
	return &adminv1.Entry{Template: tmpl, ParentId: agentID, Selectors: []string{"unix:gid:1000"}}
}

// createCode creates w and returns the item's status code.
func (e *env) createCode(t *testing.T, ws ...*adminv1.Entry) []codes.Code {
	t.Helper()
	resp, err := e.entries.BatchCreateEntry(ctxT(t), &adminv1.BatchCreateEntryRequest{Entries: ws})
	if err != nil {
		t.Fatalf("BatchCreateEntry: %v", err)
	}
	var out []codes.Code
	for _, r := range resp.GetResults() {
		out = append(out, codes.Code(r.GetStatus().GetCode()))
	}
	return out
}

// TestTemplateEntries: a template entry is stored with its literal
// prefix as SPIFFE ID; entries that could issue one ID to different
// callers are refused, on create and on update.
func TestTemplateEntries(t *testing.T) {
	e := newEnv(t, envOptions{})
	user := e.create(t, templateEntry("spiffe://example.org/user/{{unix.user}}"))
	if user.GetSpiffeId() != "spiffe://example.org/user" || user.GetTemplate() != "spiffe://example.org/user/{{unix.user}}" {
		t.Fatalf("stored %q %q", user.GetSpiffeId(), user.GetTemplate())
	}
	got, err := e.entries.GetEntry(ctxT(t), &adminv1.GetEntryRequest{Id: user.GetId()})
	if err != nil || got.GetTemplate() != user.GetTemplate() {
		t.Fatalf("GetEntry: %v %q", err, got.GetTemplate())
	}
	tests := []struct {
		name string
		w    *adminv1.Entry
		code codes.Code
	}{
		{name: "same template other selectors", w: &adminv1.Entry{Template: "spiffe://example.org/user/{{unix.user}}", ParentId: agentID, Selectors: []string{"unix:gid:2000"}}, code: codes.OK},
		{name: "overlapping template", w: templateEntry("spiffe://example.org/user/{{unix.uid}}"), code: codes.InvalidArgument},
		{name: "plain ID inside", w: &adminv1.Entry{SpiffeId: "spiffe://example.org/user/alice", ParentId: agentID, Selectors: []string{"unix:uid:1"}}, code: codes.InvalidArgument},
		{name: "plain ID beside", w: &adminv1.Entry{SpiffeId: "spiffe://example.org/user/alice/x", ParentId: agentID, Selectors: []string{"unix:uid:1"}}, code: codes.OK},
		{name: "other prefix", w: templateEntry("spiffe://example.org/uid/{{unix.uid}}"), code: codes.OK},
		{name: "reserved", w: templateEntry("spiffe://example.org/writ/{{unix.user}}"), code: codes.InvalidArgument},
		{name: "placeholder first", w: templateEntry("spiffe://example.org/{{unix.user}}"), code: codes.InvalidArgument},
		{name: "wrong spiffe_id", w: &adminv1.Entry{Template: "spiffe://example.org/svc/{{unix.user}}", SpiffeId: "spiffe://example.org/other", ParentId: agentID, Selectors: []string{"unix:gid:1"}}, code: codes.InvalidArgument},
		{name: "admin template", w: &adminv1.Entry{Template: "spiffe://example.org/adm/{{unix.user}}", ParentId: agentID, Selectors: []string{"unix:gid:1"}, Admin: true}, code: codes.InvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := e.createCode(t, tc.w); got[0] != tc.code {
				t.Fatalf("code %v, want %v", got[0], tc.code)
			}
		})
	}
	// Within one batch: the second of two overlapping templates.
	if got := e.createCode(t, templateEntry("spiffe://example.org/b/{{unix.user}}"), templateEntry("spiffe://example.org/b/{{unix.uid}}")); got[0] != codes.OK || got[1] != codes.InvalidArgument {
		t.Errorf("batch codes %v", got)
	}
	// Update: a plain entry moved into the template's space, and a
	// template changed to overlap another, are refused.
	plain := e.create(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/p", ParentId: agentID, Selectors: []string{"unix:uid:5"}})
	_, err = e.entries.UpdateEntry(ctxT(t), &adminv1.UpdateEntryRequest{Entry: &adminv1.Entry{Id: plain.GetId(), SpiffeId: "spiffe://example.org/user/bob"}, UpdateMask: []string{"spiffe_id"}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("plain entry moved under a template: %v", err)
	}
	_, err = e.entries.UpdateEntry(ctxT(t), &adminv1.UpdateEntryRequest{Entry: &adminv1.Entry{Id: user.GetId(), Template: "spiffe://example.org/uid/{{unix.gid}}"}, UpdateMask: []string{"spiffe_id"}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("template changed to overlap another: %v", err)
	}
	up, err := e.entries.UpdateEntry(ctxT(t), &adminv1.UpdateEntryRequest{Entry: &adminv1.Entry{Id: user.GetId(), Template: "spiffe://example.org/users/{{unix.user}}"}, UpdateMask: []string{"spiffe_id"}})
	if err != nil || up.GetTemplate() != "spiffe://example.org/users/{{unix.user}}" || up.GetSpiffeId() != "spiffe://example.org/users" {
		t.Errorf("template update: %v %+v", err, up)
	}
	// A plain entry made of a template and back.
	up, err = e.entries.UpdateEntry(ctxT(t), &adminv1.UpdateEntryRequest{Entry: &adminv1.Entry{Id: user.GetId(), SpiffeId: "spiffe://example.org/single"}, UpdateMask: []string{"spiffe_id"}})
	if err != nil || up.GetTemplate() != "" {
		t.Errorf("template to plain: %v %+v", err, up)
	}
	// No reports source: nothing issued, and a plain entry is refused.
	if _, err := e.entries.ListTemplateIssued(ctxT(t), &adminv1.ListTemplateIssuedRequest{Id: plain.GetId()}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("ListTemplateIssued of a plain entry: %v", err)
	}
}
