package entry_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/entry"
)

func sels(t testing.TB, ss ...string) []entry.Selector {
	t.Helper()
	out := make([]entry.Selector, len(ss))
	for i, s := range ss {
		sel, err := entry.ParseSelector(s)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = sel
	}
	return out
}

var templateCases = []struct {
	name   string
	in     string
	prefix string // "" when the template must be refused
}{
	{name: "user", in: "spiffe://example.org/user/{{unix.user}}", prefix: "spiffe://example.org/user"},
	{name: "spaces and filter", in: "spiffe://example.org/svc/{{ unix.path | base }}", prefix: "spiffe://example.org/svc"},
	{name: "node and uid", in: "spiffe://example.org/node/{{node.x509pop.subject.cn}}/uid/{{unix.uid}}", prefix: "spiffe://example.org/node"},
	{name: "generic type", in: "spiffe://example.org/k/{{k8s.sa}}", prefix: "spiffe://example.org/k"},
	{name: "no placeholder", in: "spiffe://example.org/user/alice"},
	{name: "placeholder first", in: "spiffe://example.org/{{unix.user}}"},
	{name: "reserved prefix", in: "spiffe://example.org/writ/{{unix.user}}"},
	{name: "reserved agent prefix", in: "spiffe://example.org/writ/agent/{{unix.user}}"},
	{name: "other trust domain", in: "spiffe://other.org/user/{{unix.user}}"},
	{name: "partial segment", in: "spiffe://example.org/user/u-{{unix.uid}}"},
	{name: "two in one segment", in: "spiffe://example.org/user/{{unix.uid}}{{unix.gid}}"},
	{name: "unclosed", in: "spiffe://example.org/user/{{unix.user"},
	{name: "unknown filter", in: "spiffe://example.org/user/{{unix.user | upper}}"},
	{name: "unknown unix key", in: "spiffe://example.org/user/{{unix.home}}"},
	{name: "no key", in: "spiffe://example.org/user/{{unix}}"},
	{name: "node without key", in: "spiffe://example.org/user/{{node.x509pop}}"},
	{name: "uppercase field", in: "spiffe://example.org/user/{{UNIX.user}}"},
	{name: "empty segment", in: "spiffe://example.org/user//{{unix.user}}"},
	{name: "dot dot literal", in: "spiffe://example.org/user/../{{unix.user}}"},
	{name: "percent literal", in: "spiffe://example.org/us%65r/{{unix.user}}"},
	{name: "trailing slash", in: "spiffe://example.org/user/{{unix.user}}/"},
	{name: "query", in: "spiffe://example.org/user/{{unix.user}}?x"},
	{name: "control", in: "spiffe://example.org/user/{{unix.user}}\n"},
	{name: "too many", in: "spiffe://example.org/a" + strings.Repeat("/{{unix.uid}}", entry.MaxTemplatePlaceholders+1)},
}

func TestParseTemplate(t *testing.T) {
	for _, tc := range templateCases {
		t.Run(tc.name, func(t *testing.T) {
			tm, err := entry.ParseTemplate(td, tc.in)
			if tc.prefix == "" {
				if err == nil {
					t.Fatalf("ParseTemplate(%q) accepted", tc.in)
				}
				if !errors.Is(err, entry.ErrInvalid) {
					t.Errorf("error %v does not wrap ErrInvalid", err)
				}
				if strings.ContainsAny(err.Error(), "\n\r") {
					t.Errorf("error %q carries a raw control character", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseTemplate(%q): %v", tc.in, err)
			}
			if tm.Prefix().String() != tc.prefix || tm.String() != tc.in {
				t.Errorf("prefix %q string %q", tm.Prefix(), tm.String())
			}
		})
	}
}

func TestTemplateFill(t *testing.T) {
	caller := []string{"unix:uid:1001", "unix:gid:1000", "unix:user:alice", "unix:group:staff", "unix:path:/usr/bin/web", "unix:supplementary_gid:1", "unix:supplementary_gid:2"}
	node := []string{"x509pop:subject:cn:node-1", "x509pop:ca:abc"}
	tests := []struct {
		name     string
		template string
		caller   []string
		node     []string
		want     string // "" when no identity
		used     []string
	}{
		{name: "user", template: "spiffe://example.org/user/{{unix.user}}", caller: caller, want: "spiffe://example.org/user/alice", used: []string{"unix:user:alice"}},
		{name: "path base", template: "spiffe://example.org/svc/{{unix.path | base}}", caller: caller, want: "spiffe://example.org/svc/web", used: []string{"unix:path:/usr/bin/web"}},
		{name: "path without base", template: "spiffe://example.org/svc/{{unix.path}}", caller: caller},
		{name: "node and uid", template: "spiffe://example.org/node/{{node.x509pop.subject.cn}}/uid/{{unix.uid}}", caller: caller, node: node, want: "spiffe://example.org/node/node-1/uid/1001", used: []string{"unix:uid:1001"}},
		{name: "no node selectors", template: "spiffe://example.org/node/{{node.x509pop.subject.cn}}", caller: caller},
		{name: "missing field", template: "spiffe://example.org/user/{{unix.user}}", caller: []string{"unix:uid:5"}},
		{name: "two values", template: "spiffe://example.org/g/{{unix.supplementary_gid}}", caller: caller},
		{name: "percent encoded slash in name", template: "spiffe://example.org/user/{{k.user}}", caller: []string{"k:user:a%2Fb"}},
		{name: "dot dot name", template: "spiffe://example.org/user/{{k.user}}", caller: []string{"k:user:.."}},
		{name: "dot name", template: "spiffe://example.org/user/{{k.user}}", caller: []string{"k:user:."}},
		{name: "slash in value", template: "spiffe://example.org/user/{{k.user}}", caller: []string{"k:user:a/b"}},
		{name: "path with dot dot base", template: "spiffe://example.org/svc/{{k.path | base}}", caller: []string{"k:path:/opt/../.."}},
		{name: "path ending in slash", template: "spiffe://example.org/svc/{{k.path | base}}", caller: []string{"k:path:/opt/"}},
		{name: "empty value", template: "spiffe://example.org/user/{{k.group}}", caller: []string{"k:group:"}},
		{name: "space", template: "spiffe://example.org/user/{{k.user}}", caller: []string{"k:user:a b"}},
		{name: "unicode", template: "spiffe://example.org/user/{{k.user}}", caller: []string{"k:user:é"}},
		{name: "dollar", template: "spiffe://example.org/user/{{unix.user}}", caller: []string{"unix:user:host$"}},
		{name: "nested key does not match shorter", template: "spiffe://example.org/n/{{node.x509pop.subject}}", caller: caller, node: node},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tm, err := entry.ParseTemplate(td, tc.template)
			if err != nil {
				t.Fatal(err)
			}
			// Raw selectors, as an attestor could produce them, not
			// only those ParseSelector accepts.
			raw := func(ss []string) []entry.Selector {
				var out []entry.Selector
				for _, s := range ss {
					typ, v, _ := strings.Cut(s, ":")
					out = append(out, entry.Selector{Type: typ, Value: v})
				}
				return out
			}
			id, used, err := tm.Fill(raw(tc.caller), raw(tc.node))
			if tc.want == "" {
				if err == nil {
					t.Fatalf("Fill gave %s, want no identity", id)
				}
				if !errors.Is(err, entry.ErrTemplateFill) {
					t.Errorf("error %v does not wrap ErrTemplateFill", err)
				}
				for _, s := range tc.caller {
					if v := s[strings.LastIndexByte(s, ':')+1:]; len(v) > 4 && strings.Contains(err.Error(), v) {
						t.Errorf("error %q quotes a selector value", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.String() != tc.want {
				t.Errorf("Fill = %s, want %s", id, tc.want)
			}
			if !tm.Conforms(id) {
				t.Errorf("template does not conform to its own fill %s", id)
			}
			var got []string
			for _, s := range used {
				got = append(got, s.String())
			}
			if strings.Join(got, ",") != strings.Join(tc.used, ",") {
				t.Errorf("used %v, want %v", got, tc.used)
			}
		})
	}
}

func TestTemplateConforms(t *testing.T) {
	tm, err := entry.ParseTemplate(td, "spiffe://example.org/user/{{unix.user}}/x")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id   string
		want bool
	}{
		{"spiffe://example.org/user/alice/x", true},
		{"spiffe://example.org/user/alice/y", false},
		{"spiffe://example.org/user/alice", false},
		{"spiffe://example.org/user/a/b/x", false},
		{"spiffe://example.org/other/alice/x", false},
		{"spiffe://other.org/user/alice/x", false},
	} {
		if got := tm.Conforms(spiffeid.RequireFromString(tc.id)); got != tc.want {
			t.Errorf("Conforms(%s) = %v, want %v", tc.id, got, tc.want)
		}
	}
}

// TestTemplateConformsFor: node.* segments must be what the node
// selectors fill (base filter included); workload segments are only
// checked for shape.
func TestTemplateConformsFor(t *testing.T) {
	tm, err := entry.ParseTemplate(td, "spiffe://example.org/n/{{node.x509pop.subject.cn}}/{{node.x509pop.san.uri | base}}/{{unix.user}}")
	if err != nil {
		t.Fatal(err)
	}
	node := sels(t, "x509pop:subject:cn:web1", "x509pop:san:uri:https://example.org/hosts/h1")
	for _, tc := range []struct {
		id   string
		node []entry.Selector
		want bool
	}{
		{"spiffe://example.org/n/web1/h1/alice", node, true},
		{"spiffe://example.org/n/web1/h1/bob", node, true},
		{"spiffe://example.org/n/web2/h1/alice", node, false},
		{"spiffe://example.org/n/web1/h2/alice", node, false},
		{"spiffe://example.org/n/web1/h1/alice", nil, false},
		{"spiffe://example.org/n/web1/h1/alice", append(sels(t, "x509pop:subject:cn:web2"), node...), false},
		{"spiffe://example.org/n/web1/alice", node, false},
	} {
		if got := tm.ConformsFor(spiffeid.RequireFromString(tc.id), tc.node); got != tc.want {
			t.Errorf("ConformsFor(%s, %v) = %v, want %v", tc.id, tc.node, got, tc.want)
		}
	}
}

func TestCheckTemplateOverlap(t *testing.T) {
	mk := func(id, tmpl, sid string) *entry.Entry {
		return &entry.Entry{ID: id, Template: tmpl, SPIFFEID: spiffeid.RequireFromString(sid)}
	}
	user := mk("a", "spiffe://example.org/user/{{unix.user}}", "spiffe://example.org/user")
	tests := []struct {
		name    string
		other   *entry.Entry
		overlap bool
	}{
		{name: "same template", other: mk("b", "spiffe://example.org/user/{{unix.user}}", "spiffe://example.org/user")},
		{name: "other field same shape", other: mk("b", "spiffe://example.org/user/{{unix.uid}}", "spiffe://example.org/user"), overlap: true},
		{name: "other prefix", other: mk("b", "spiffe://example.org/svc/{{unix.user}}", "spiffe://example.org/svc")},
		{name: "longer", other: mk("b", "spiffe://example.org/user/{{unix.user}}/x", "spiffe://example.org/user")},
		{name: "plain ID inside", other: mk("b", "", "spiffe://example.org/user/alice"), overlap: true},
		{name: "plain ID outside", other: mk("b", "", "spiffe://example.org/user/alice/x")},
		{name: "itself", other: mk("a", "spiffe://example.org/user/{{unix.uid}}", "spiffe://example.org/user")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := entry.CheckTemplateOverlap(td, user, tc.other)
			if (err != nil) != tc.overlap {
				t.Fatalf("CheckTemplateOverlap = %v, want overlap %v", err, tc.overlap)
			}
			if err != nil && !errors.Is(err, entry.ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
		})
	}
}

func TestEntryValidateTemplate(t *testing.T) {
	e := &entry.Entry{
		SPIFFEID:  spiffeid.RequireFromString("spiffe://example.org/user"),
		Template:  "spiffe://example.org/user/{{unix.user}}",
		ParentID:  spiffeid.RequireFromString("spiffe://example.org/writ/agent/n1"),
		Selectors: sels(t, "unix:gid:1000"),
	}
	if err := e.Validate(td); err != nil {
		t.Fatal(err)
	}
	plain := *e
	plain.Template = ""
	if e.UniqueKey() == plain.UniqueKey() {
		t.Error("a template entry has the unique key of the plain entry with its prefix")
	}
	bad := *e
	bad.SPIFFEID = spiffeid.RequireFromString("spiffe://example.org/other")
	if err := bad.Validate(td); !errors.Is(err, entry.ErrInvalid) {
		t.Errorf("prefix mismatch: %v", err)
	}
	adm := *e
	adm.Admin = true
	if err := adm.Validate(td); !errors.Is(err, entry.ErrInvalid) {
		t.Errorf("admin template: %v", err)
	}
}

func TestInstanceID(t *testing.T) {
	id := spiffeid.RequireFromString("spiffe://example.org/user/alice")
	eid := entry.NewID()
	got := entry.InstanceID(eid, id)
	e, s, ok := entry.SplitInstanceID(got)
	if !ok || e != eid || s != id.String() {
		t.Errorf("SplitInstanceID(%q) = %q %q %v", got, e, s, ok)
	}
	if _, _, ok := entry.SplitInstanceID(eid); ok {
		t.Error("a plain entry ID splits")
	}
}

func FuzzTemplate(f *testing.F) {
	for _, tc := range templateCases {
		f.Add(tc.in, "unix:user:alice")
	}
	f.Add("spiffe://example.org/svc/{{unix.path | base}}", "unix:path:/a/../b")
	f.Fuzz(func(t *testing.T, s, sel string) {
		tm, err := entry.ParseTemplate(td, s)
		if err != nil {
			return
		}
		if tm.String() != s || entry.IsReserved(tm.Prefix()) {
			t.Fatalf("template %q: string %q prefix %q", s, tm.String(), tm.Prefix())
		}
		typ, v, _ := strings.Cut(sel, ":")
		id, _, err := tm.Fill([]entry.Selector{{Type: typ, Value: v}}, nil)
		if err != nil {
			return
		}
		if _, perr := entry.ParseWorkloadID(td, id.String()); perr != nil || !tm.Conforms(id) {
			t.Fatalf("template %q filled with %q gave %q: %v", s, sel, id, perr)
		}
	})
}
