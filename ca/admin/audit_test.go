package admin_test

import (
	"log/slog"
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"writ.dev/writ/ca/admin"
	adminv1 "writ.dev/writ/ca/api/admin/v1"

	"writ.dev/writ/internal/logkey"
)

// checkAudit fails t unless rec is an Info audit record of method by this
// process, with the given outcome and IDs ("" for absent).
func checkAudit(t *testing.T, rec logRecord, method string, code codes.Code, spiffeID, entryID string) {
	t.Helper()
	a := rec.attrs
	switch {
	case rec.level != slog.LevelInfo,
		a[logkey.Method].String() != method,
		a[logkey.UID].Kind() != slog.KindUint64 || a[logkey.UID].Uint64() != uint64(os.Getuid()),
		a[logkey.PID].Kind() != slog.KindInt64 || a[logkey.PID].Int64() != int64(os.Getpid()),
		a[logkey.Code].String() != code.String(),
		attrString(a, logkey.SPIFFEID) != spiffeID,
		attrString(a, logkey.EntryID) != entryID:
		t.Errorf("audit record %s\nwant method=%s uid=%d pid=%d code=%s spiffe_id=%q entry_id=%q",
			rec.text, method, os.Getuid(), os.Getpid(), code, spiffeID, entryID)
	}
}

// one returns the only audit record of method.
func (e *env) oneAudit(t *testing.T, method string) logRecord {
	t.Helper()
	recs := e.logs.audit(method)
	if len(recs) != 1 {
		t.Fatalf("%d audit records of %s, want 1: %v", len(recs), method, recs)
	}
	return recs[0]
}

func TestAuditJoinToken(t *testing.T) {
	e := newEnv(t, envOptions{})
	resp, err := e.tokens.GenerateJoinToken(ctxT(t), &adminv1.GenerateJoinTokenRequest{SpiffeId: agentID})
	if err != nil {
		t.Fatal(err)
	}
	m := adminv1.JoinTokenService_GenerateJoinToken_FullMethodName
	checkAudit(t, e.oneAudit(t, m), m, codes.OK, agentID, "")
	for _, rec := range e.logs.all() {
		if strings.Contains(rec.text, resp.GetToken()) {
			t.Errorf("log record contains the join token: %s", rec.text)
		}
	}
}

func TestAuditEntries(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := ctxT(t)
	bad := validEntry(1)
	bad.Selectors = []string{"unix:uid:01"}
	resp, err := e.entries.BatchCreateEntry(ctx, &adminv1.BatchCreateEntryRequest{Entries: []*adminv1.Entry{validEntry(0), bad, validEntry(0)}})
	if err != nil {
		t.Fatal(err)
	}
	created := resp.GetResults()[0].GetEntry()
	m := adminv1.EntryService_BatchCreateEntry_FullMethodName
	recs := e.logs.audit(m)
	if len(recs) != 3 {
		t.Fatalf("%d audit records for a batch of 3, want one per item: %v", len(recs), recs)
	}
	checkAudit(t, recs[0], m, codes.OK, created.GetSpiffeId(), created.GetId())
	checkAudit(t, recs[1], m, codes.InvalidArgument, "", "")
	checkAudit(t, recs[2], m, codes.AlreadyExists, created.GetSpiffeId(), "")

	if _, err := e.entries.BatchCreateEntry(ctx, &adminv1.BatchCreateEntryRequest{Entries: make([]*adminv1.Entry, admin.MaxBatchCreate+1)}); err == nil {
		t.Fatal("oversize batch accepted")
	}
	if recs := e.logs.audit(m); len(recs) != 4 {
		t.Fatalf("refused batch: %d audit records in all, want 4", len(recs))
	} else {
		checkAudit(t, recs[3], m, codes.InvalidArgument, "", "")
	}

	m = adminv1.EntryService_UpdateEntry_FullMethodName
	if _, err := e.entries.UpdateEntry(ctx, &adminv1.UpdateEntryRequest{
		Entry:      &adminv1.Entry{Id: created.GetId(), SpiffeId: "spiffe://example.org/renamed"},
		UpdateMask: []string{"spiffe_id"},
	}); err != nil {
		t.Fatal(err)
	}
	checkAudit(t, e.oneAudit(t, m), m, codes.OK, "spiffe://example.org/renamed", created.GetId())

	m = adminv1.EntryService_DeleteEntry_FullMethodName
	if _, err := e.entries.DeleteEntry(ctx, &adminv1.DeleteEntryRequest{Id: created.GetId()}); err != nil {
		t.Fatal(err)
	}
	checkAudit(t, e.oneAudit(t, m), m, codes.OK, "spiffe://example.org/renamed", created.GetId())
	e.logs.reset()
	if _, err := e.entries.DeleteEntry(ctx, &adminv1.DeleteEntryRequest{Id: created.GetId()}); err == nil {
		t.Fatal("second delete succeeded")
	}
	checkAudit(t, e.oneAudit(t, m), m, codes.NotFound, "", created.GetId())

	// Reads are not audited.
	e.logs.reset()
	if _, err := e.entries.GetEntry(ctx, &adminv1.GetEntryRequest{Id: created.GetId()}); err == nil {
		t.Fatal("GetEntry of a deleted entry succeeded")
	}
	if _, err := e.listAll(t, &adminv1.ListEntriesRequest{}); err != nil {
		t.Fatal(err)
	}
	if recs := e.logs.all(); len(recs) != 0 {
		t.Errorf("reads logged %v", recs)
	}
}

func TestAuditAgents(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.seedAgents(t)
	ctx := ctxT(t)
	calls := []struct {
		method string
		call   func() error
	}{
		{adminv1.AgentService_BanAgent_FullMethodName, func() error {
			_, err := e.agents.BanAgent(ctx, &adminv1.BanAgentRequest{SpiffeId: agentID})
			return err
		}},
		{adminv1.AgentService_UnbanAgent_FullMethodName, func() error {
			_, err := e.agents.UnbanAgent(ctx, &adminv1.UnbanAgentRequest{SpiffeId: agentID})
			return err
		}},
		{adminv1.AgentService_EvictAgent_FullMethodName, func() error {
			_, err := e.agents.EvictAgent(ctx, &adminv1.EvictAgentRequest{SpiffeId: agentID})
			return err
		}},
	}
	for _, c := range calls {
		if err := c.call(); err != nil {
			t.Fatalf("%s: %v", c.method, err)
		}
		checkAudit(t, e.oneAudit(t, c.method), c.method, codes.OK, agentID, "")
	}
	if _, err := e.agents.ListAgents(ctx, &adminv1.ListAgentsRequest{}); err != nil {
		t.Fatal(err)
	}
	if n := len(e.logs.all()); n != len(calls) {
		t.Errorf("%d records, want %d: ListAgents must not be audited", n, len(calls))
	}
}

// TestLogsHoldNoSelectors runs calls whose requests and errors mention
// selectors, and checks that no log record does.
func TestLogsHoldNoSelectors(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := ctxT(t)
	w := validEntry(0)
	w.Selectors = []string{"k8s:secret-namespace"}
	bad := validEntry(1)
	bad.Selectors = []string{"k8s:other-secret\x1b"}
	if _, err := e.entries.BatchCreateEntry(ctx, &adminv1.BatchCreateEntryRequest{Entries: []*adminv1.Entry{w, bad, w}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.listAll(t, &adminv1.ListEntriesRequest{Selectors: []string{"k8s:listed-secret"}}); err != nil {
		t.Fatal(err)
	}
	for _, rec := range e.logs.all() {
		for _, s := range []string{"secret-namespace", "other-secret", "listed-secret"} {
			if strings.Contains(rec.text, s) {
				t.Errorf("log record mentions selector %q: %s", s, rec.text)
			}
		}
	}
}

// attrString returns the string value of key, "" if it is absent.
func attrString(attrs map[string]slog.Value, key string) string {
	v, ok := attrs[key]
	if !ok {
		return ""
	}
	return v.String()
}
