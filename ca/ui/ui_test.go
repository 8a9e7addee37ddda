package ui

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

type fakeStore struct {
	agents  []*datastore.Agent
	entries []*entry.Entry
	keys    []*datastore.CAKey
}

func (f *fakeStore) ListAgents(context.Context) ([]*datastore.Agent, error) { return f.agents, nil }
func (f *fakeStore) ListEntries(context.Context, datastore.EntryFilter) ([]*entry.Entry, error) {
	return f.entries, nil
}
func (f *fakeStore) ListCAKeys(context.Context) ([]*datastore.CAKey, error) { return f.keys, nil }

var (
	td    = spiffeid.RequireTrustDomainFromString("example.org")
	token = strings.Repeat("t0k3n", 8)
	t0    = time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
)

func newTestHandler(t *testing.T, audit *AuditLog) (*Handler, *fakeStore) {
	t.Helper()
	sel, err := entry.ParseSelector("unix:path:/srv/<script>alert(1)</script>")
	if err != nil {
		t.Fatal(err)
	}
	store := &fakeStore{
		agents: []*datastore.Agent{{SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/writ/agent/n1"), AttestationType: "join_token", CertNotAfter: t0.Add(time.Hour), UpdatedAt: t0}},
		entries: []*entry.Entry{
			{ID: "e1", SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/web"), ParentID: spiffeid.RequireFromString("spiffe://example.org/writ/agent/n1"), Selectors: []entry.Selector{sel}},
			{ID: "e2", SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/db"), ParentID: spiffeid.RequireFromString("spiffe://example.org/writ/agent/n1"), Admin: true},
		},
		keys: []*datastore.CAKey{
			{ID: "k1", Kind: datastore.CAKeyJWT, State: datastore.CAKeyActive, ServerID: "s1", NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(23 * time.Hour)},
			{ID: "k2", Kind: datastore.CAKeyJWT, State: datastore.CAKeyPrepared, ServerID: "s1", NotBefore: t0, NotAfter: t0.Add(24 * time.Hour)},
		},
	}
	h, err := New(Config{TrustDomain: td, Store: store, Token: token, Audit: audit, ServerID: "s1", Clock: fakeclock.New(t0),
		Connected: func() map[spiffeid.ID]int {
			return map[spiffeid.ID]int{spiffeid.RequireFromString("spiffe://example.org/writ/agent/n1"): 1}
		}})
	if err != nil {
		t.Fatal(err)
	}
	return h, store
}

func get(h http.Handler, target string, hdr map[string]string) *http.Response {
	r := httptest.NewRequest(http.MethodGet, target, nil)
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Result()
}

func body(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestTokenRequired(t *testing.T) {
	h, _ := newTestHandler(t, nil)
	for name, hdr := range map[string]map[string]string{
		"none":           nil,
		"wrong bearer":   {"Authorization": "Bearer " + strings.Repeat("x", len(token))},
		"prefix":         {"Authorization": "Bearer " + token[:len(token)-1]},
		"basic":          {"Authorization": "Basic " + token},
		"wrong cookie":   {"Cookie": cookieName + "=nope"},
		"token as other": {"X-Token": token},
	} {
		resp := get(h, "/", hdr)
		b := body(t, resp)
		if resp.StatusCode != http.StatusUnauthorized || strings.Contains(b, "example.org") {
			t.Errorf("%s: %d %q, want 401 and nothing else", name, resp.StatusCode, b)
		}
	}
	for _, target := range []string{"/style.css", "/?token=wrong", "/?q=web"} {
		if resp := get(h, target, nil); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s without a token: %d", target, resp.StatusCode)
		}
	}
	if resp := get(h, "/", map[string]string{"Authorization": "Bearer " + token}); resp.StatusCode != http.StatusOK {
		t.Errorf("bearer: %d", resp.StatusCode)
	}
}

func TestTokenInQuerySetsCookie(t *testing.T) {
	h, _ := newTestHandler(t, nil)
	resp := get(h, "/?q=web&token="+token, nil)
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("status %d, want 303", resp.StatusCode)
	}
	if loc := resp.Header.Get("Location"); strings.Contains(loc, token) || loc != "/?q=web" {
		t.Fatalf("redirect to %q, want the page without the token", loc)
	}
	cookies := resp.Cookies()
	if len(cookies) != 1 || !cookies[0].HttpOnly || cookies[0].SameSite != http.SameSiteStrictMode || cookies[0].Name != cookieName {
		t.Fatalf("cookie %+v, want HttpOnly SameSite=Strict", cookies)
	}
	resp = get(h, "/?q=web", map[string]string{"Cookie": cookieName + "=" + cookies[0].Value})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("with the cookie: %d", resp.StatusCode)
	}
}

func TestPageContent(t *testing.T) {
	audit := NewAuditLog(2)
	log := slog.New(audit.Handler(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelError}), "audit"))
	log.Info("admin mutation", "audit", true, "method", "/writ.admin.v1.EntryService/DeleteEntry", "entry_id", "e9")
	log.Info("not audited", "method", "x")
	auth := map[string]string{"Authorization": "Bearer " + token}
	h, _ := newTestHandler(t, audit)
	resp := get(h, "/", auth)
	b := body(t, resp)
	for _, want := range []string{"example.org", "spiffe://example.org/web", "spiffe://example.org/db", "spiffe://example.org/writ/agent/n1",
		"join_token", "2026-12-03T13:00:00Z", "in 1h00m", "prepared", "active", "DeleteEntry", "entry_id=e9", "admin"} {
		if !strings.Contains(b, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(b, "<script>") || strings.Contains(b, "not audited") || !strings.Contains(b, "&lt;script&gt;") {
		t.Error("page shows an unescaped selector or a record that is not an audit record")
	}
	if ct := resp.Header.Get("Content-Security-Policy"); !strings.Contains(ct, "default-src 'none'") {
		t.Errorf("CSP %q", ct)
	}
	// Search.
	b = body(t, get(h, "/?q=DB", auth))
	if !strings.Contains(b, "spiffe://example.org/db") || strings.Contains(b, "spiffe://example.org/web<") || !strings.Contains(b, "1 of 2 entries") {
		t.Errorf("search for DB:\n%s", b)
	}
	if resp := get(h, "/style.css", auth); resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/css; charset=utf-8" {
		t.Errorf("style.css: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if resp := get(h, "/nope", auth); resp.StatusCode != http.StatusNotFound {
		t.Errorf("/nope: %d", resp.StatusCode)
	}
}

func TestAuditLogKeepsTheLast(t *testing.T) {
	l := NewAuditLog(3)
	log := slog.New(l.Handler(slog.DiscardHandler, "audit")).With("component", "admin")
	for i := range 5 {
		log.Info("m", "audit", true, "i", i)
	}
	got := l.Recent()
	if len(got) != 3 || got[0].Attrs[1] != "i=4" || got[2].Attrs[1] != "i=2" || got[0].Attrs[0] != "component=admin" {
		t.Fatalf("recent %+v", got)
	}
}

func TestTimeline(t *testing.T) {
	keys := []*datastore.CAKey{
		{ID: "j", Kind: datastore.CAKeyJWT, State: datastore.CAKeyActive, NotBefore: t0, NotAfter: t0.Add(10 * time.Hour)},
		{ID: "x", Kind: datastore.CAKeyX509, State: datastore.CAKeyRetired, NotBefore: t0.Add(-10 * time.Hour), NotAfter: t0},
	}
	tl := buildTimeline(keys, t0)
	if len(tl.Bars) != 2 || tl.Bars[0].Kind != "x509" || tl.Bars[0].X != 0 || tl.Bars[0].W != 500 || tl.Bars[1].X != 500 || tl.NowX != 500 {
		t.Fatalf("timeline %+v", tl)
	}
	if tl := buildTimeline(nil, t0); len(tl.Bars) != 0 {
		t.Fatal("bars without keys")
	}
}

func TestShortTokenRefused(t *testing.T) {
	if _, err := New(Config{TrustDomain: td, Store: &fakeStore{}, Token: "short"}); err == nil {
		t.Fatal("a short token was accepted")
	}
}
