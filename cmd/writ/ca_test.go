package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
)

func (f *fakeAdmin) ListAuthorities(_ context.Context, req *adminv1.ListAuthoritiesRequest) (*adminv1.ListAuthoritiesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastCA = req
	resp := &adminv1.ListAuthoritiesResponse{}
	for _, a := range f.authorities {
		if req.GetKind() == "" || a.GetKind() == req.GetKind() {
			resp.Authorities = append(resp.Authorities, proto.CloneOf(a))
		}
	}
	return resp, nil
}

func (f *fakeAdmin) TaintAuthority(_ context.Context, req *adminv1.TaintAuthorityRequest) (*adminv1.Authority, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastCA = req
	return &adminv1.Authority{Kind: req.GetKind(), Id: req.GetId(), State: "tainted"}, nil
}

func (f *fakeAdmin) ActivateAuthority(_ context.Context, req *adminv1.ActivateAuthorityRequest) (*adminv1.Authority, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastCA = req
	return &adminv1.Authority{Kind: req.GetKind(), Id: req.GetId(), State: "active"}, nil
}

func (f *fakeAdmin) Rotate(_ context.Context, req *adminv1.RotateRequest) (*adminv1.RotateResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastCA = req
	return &adminv1.RotateResponse{Activated: []*adminv1.Authority{{Kind: "x509", Id: "aa", State: "active"}, {Kind: "jwt", Id: "bb", State: "active"}}}, nil
}

func TestCAShowJSON(t *testing.T) {
	f := startFake(t)
	f.authorities = []*adminv1.Authority{
		{Kind: "x509", Id: "3f2a", State: "active", NotBefore: fakeCreatedAt, NotAfter: fakeCreatedAt + 86400, ServerId: "srv-1"},
		{Kind: "x509", Id: "77aa", State: "old", NotBefore: fakeCreatedAt - 86400, NotAfter: fakeCreatedAt + 3600, ServerId: "srv-1", SignedUntil: fakeCreatedAt, UpstreamChain: []string{"CN=Upstream Root"}},
		{Kind: "jwt", Id: "0c0c", State: "active", NotBefore: fakeCreatedAt, NotAfter: fakeCreatedAt + 86400, ServerId: "srv-1"},
	}
	r := runCLI(t, "", f.args("ca", "x509", "show", "--output", "json")...)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("%+v", r)
	}
	var got []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("not a JSON array: %v\n%s", err, r.stdout)
	}
	if len(got) != 2 {
		t.Fatalf("%d objects, want the 2 X.509 authorities:\n%s", len(got), r.stdout)
	}
	for _, key := range []string{"kind", "id", "state", "not_before", "not_after", "server_id", "upstream_chain"} {
		if _, ok := got[0][key]; !ok {
			t.Errorf("no %q field:\n%s", key, r.stdout)
		}
	}
	if got[0]["id"] != "3f2a" || got[0]["state"] != "active" || got[0]["kind"] != "x509" || got[0]["server_id"] != "srv-1" {
		t.Errorf("first object: %v", got[0])
	}
	if got[1]["state"] != "old" || got[1]["signed_until"] == nil {
		t.Errorf("second object: %v", got[1])
	}
	for _, key := range []string{"not_before", "not_after"} {
		s, _ := got[0][key].(string)
		ts, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Errorf("%s %q is not RFC 3339: %v", key, s, err)
		}
		if want := int64(fakeCreatedAt); key == "not_before" && ts.Unix() != want {
			t.Errorf("not_before = %s, want %s", s, time.Unix(want, 0).UTC())
		}
	}
	if req, ok := f.lastCA.(*adminv1.ListAuthoritiesRequest); !ok || req.GetKind() != "x509" {
		t.Errorf("request %v", f.lastCA)
	}

	r = runCLI(t, "", f.args("ca", "jwt", "show")...)
	if r.code != 0 || !strings.Contains(r.stdout, "Found 1 jwt authority") || !strings.Contains(r.stdout, "0c0c") {
		t.Errorf("text show: %+v", r)
	}
}

func TestCAChanges(t *testing.T) {
	f := startFake(t)
	r := runCLI(t, "", f.args("ca", "x509", "taint", "--id", "3f2a")...)
	if r.code != 0 || r.stdout != "tainted x509 authority 3f2a\n" {
		t.Errorf("taint: %+v", r)
	}
	r = runCLI(t, "", f.args("ca", "jwt", "activate", "--id", "0c0c", "--force")...)
	if r.code != 0 || !strings.Contains(r.stderr, "warning: --force") {
		t.Errorf("forced activate must warn on stderr: %+v", r)
	}
	if req, ok := f.lastCA.(*adminv1.ActivateAuthorityRequest); !ok || !req.GetForce() || req.GetKind() != "jwt" || req.GetId() != "0c0c" {
		t.Errorf("activate request %v", f.lastCA)
	}
	r = runCLI(t, "", f.args("ca", "rotate")...)
	if r.code != 0 || !strings.Contains(r.stderr, "warning:") || !strings.Contains(r.stdout, "activated x509 authority aa") {
		t.Errorf("rotate: %+v", r)
	}
	r = runCLI(t, "", f.args("ca", "rotate", "--wait")...)
	if req, ok := f.lastCA.(*adminv1.RotateRequest); r.code != 0 || r.stderr != "" || !ok || !req.GetWait() {
		t.Errorf("rotate --wait: %+v, request %v", r, f.lastCA)
	}
	// A malformed or missing ID is refused before any call.
	before := len(f.callNames())
	for _, args := range [][]string{{"ca", "x509", "taint", "--id", "3F2A"}, {"ca", "x509", "revoke"}, {"ca", "jwt", "activate", "--id", "a\x1b[2J"}} {
		r := runCLI(t, "", f.args(args...)...)
		if r.code != 2 || hasControl(r.stderr) {
			t.Errorf("%q: %+v, want a usage error", args, r)
		}
	}
	if n := len(f.callNames()); n != before {
		t.Errorf("bad IDs made %d calls", n-before)
	}
}
