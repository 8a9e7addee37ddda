package entry_test

import (
	"errors"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/entry"
)

func sel(s string) entry.Selector {
	v, err := entry.ParseSelector(s)
	if err != nil {
		panic(err)
	}
	return v
}

func validEntry() *entry.Entry {
	return &entry.Entry{
		SPIFFEID:  spiffeid.RequireFromString("spiffe://example.org/web"),
		ParentID:  spiffeid.RequireFromString("spiffe://example.org/writ/agent/node1"),
		Selectors: []entry.Selector{sel("unix:uid:1000"), sel("unix:gid:1000")},
		DNSNames:  []string{"web.example.org"},
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(e *entry.Entry)
		ok     bool
	}{
		{name: "valid", mutate: func(*entry.Entry) {}, ok: true},
		{name: "ttls", mutate: func(e *entry.Entry) { e.X509SVIDTTL, e.JWTSVIDTTL = time.Hour, 5*time.Minute }, ok: true},
		{name: "no spiffe id", mutate: func(e *entry.Entry) { e.SPIFFEID = spiffeid.ID{} }},
		{name: "no parent", mutate: func(e *entry.Entry) { e.ParentID = spiffeid.ID{} }},
		{name: "an agent's id", mutate: func(e *entry.Entry) { e.SPIFFEID = spiffeid.RequireFromString("spiffe://example.org/writ/agent/node2") }},
		{name: "the server's id", mutate: func(e *entry.Entry) { e.SPIFFEID = spiffeid.RequireFromString("spiffe://example.org/writ/server") }},
		{name: "under /writ", mutate: func(e *entry.Entry) { e.SPIFFEID = spiffeid.RequireFromString("spiffe://example.org/writ") }},
		{name: "writ as a later segment", mutate: func(e *entry.Entry) { e.SPIFFEID = spiffeid.RequireFromString("spiffe://example.org/app/writ/agent/x") }, ok: true},
		{name: "writ prefix of a segment", mutate: func(e *entry.Entry) { e.SPIFFEID = spiffeid.RequireFromString("spiffe://example.org/writer") }, ok: true},
		{name: "other domain", mutate: func(e *entry.Entry) { e.SPIFFEID = spiffeid.RequireFromString("spiffe://other.org/web") }},
		{name: "parent other domain", mutate: func(e *entry.Entry) { e.ParentID = spiffeid.RequireFromString("spiffe://other.org/n") }},
		{name: "trust domain id", mutate: func(e *entry.Entry) { e.SPIFFEID = spiffeid.RequireFromString("spiffe://example.org") }},
		{name: "self parent", mutate: func(e *entry.Entry) { e.ParentID = e.SPIFFEID }},
		{name: "no selectors", mutate: func(e *entry.Entry) { e.Selectors = nil }},
		{name: "duplicate selector", mutate: func(e *entry.Entry) { e.Selectors = append(e.Selectors, sel("unix:uid:1000")) }},
		{name: "unsorted selectors", mutate: func(e *entry.Entry) { e.Selectors[0], e.Selectors[1] = e.Selectors[1], e.Selectors[0] }, ok: false},
		{name: "bad selector", mutate: func(e *entry.Entry) { e.Selectors = []entry.Selector{{Type: "unix", Value: "foo:1"}} }},
		{name: "bad dns", mutate: func(e *entry.Entry) { e.DNSNames = []string{"Bad.Example"} }},
		{name: "duplicate dns", mutate: func(e *entry.Entry) { e.DNSNames = []string{"a.b", "a.b"} }},
		{name: "negative ttl", mutate: func(e *entry.Entry) { e.X509SVIDTTL = -time.Second }},
		{name: "absurd ttl", mutate: func(e *entry.Entry) { e.JWTSVIDTTL = 365 * 24 * time.Hour }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := validEntry()
			e.Normalize()
			tc.mutate(e)
			err := e.Validate(td)
			if tc.ok != (err == nil) {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, entry.ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
		})
	}
}

func TestNormalizeSortsSelectors(t *testing.T) {
	e := validEntry()
	e.Normalize()
	if e.Selectors[0].String() != "unix:gid:1000" {
		t.Fatalf("selectors not sorted: %v", e.Selectors)
	}
	if err := e.Validate(td); err != nil {
		t.Fatal(err)
	}
}

func TestUniqueKey(t *testing.T) {
	a, b := validEntry(), validEntry()
	a.Normalize()
	b.Selectors = []entry.Selector{sel("unix:gid:1000"), sel("unix:uid:1000")}
	b.DNSNames = nil
	if a.UniqueKey() != b.UniqueKey() {
		t.Fatal("same triple, different keys")
	}
	b.Selectors = b.Selectors[:1]
	if a.UniqueKey() == b.UniqueKey() {
		t.Fatal("different selectors, same key")
	}
	// The separator keeps ("a", "b:c") apart from ("a:b", "c").
	c, d := validEntry(), validEntry()
	c.Selectors = []entry.Selector{{Type: "k8s", Value: "a"}, {Type: "k8s", Value: "b"}}
	d.Selectors = []entry.Selector{{Type: "k8s", Value: "a\x00k8s:b"}}
	if c.UniqueKey() == d.UniqueKey() {
		t.Fatal("selector boundary ambiguity")
	}
}

func TestMatch(t *testing.T) {
	have := []entry.Selector{sel("unix:gid:20"), sel("unix:uid:1000"), sel("unix:user:alice")}
	for _, tc := range []struct {
		name string
		want []entry.Selector
		ok   bool
	}{
		{name: "subset", want: []entry.Selector{sel("unix:uid:1000")}, ok: true},
		{name: "all", want: []entry.Selector{sel("unix:user:alice"), sel("unix:gid:20"), sel("unix:uid:1000")}, ok: true},
		{name: "missing one", want: []entry.Selector{sel("unix:uid:1000"), sel("unix:gid:0")}},
		{name: "none have", want: []entry.Selector{sel("unix:uid:0")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := entry.Match(tc.want, have); got != tc.ok {
				t.Fatalf("Match = %v, want %v", got, tc.ok)
			}
		})
	}
}

func TestNewIDParses(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		id := entry.NewID()
		if _, err := entry.ParseEntryID(id); err != nil {
			t.Fatal(err)
		}
		if seen[id] {
			t.Fatal("duplicate ID")
		}
		seen[id] = true
	}
	for _, bad := range []string{"", "not-a-uuid", "AAAAAAAA-AAAA-4AAA-8AAA-AAAAAAAAAAAA", "../../etc/passwd-aaaa-aaaa-aaaaaaaaaaa"} {
		if _, err := entry.ParseEntryID(bad); err == nil {
			t.Errorf("ParseEntryID(%q) accepted", bad)
		}
	}
}

func TestClone(t *testing.T) {
	e := validEntry()
	c := e.Clone()
	c.Selectors[0] = sel("unix:uid:1")
	c.DNSNames[0] = "x.y"
	if e.Selectors[0].String() != "unix:uid:1000" || e.DNSNames[0] != "web.example.org" {
		t.Fatal("clone shares slices")
	}
}
