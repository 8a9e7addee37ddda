package admin_test

import (
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"unicode"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"writ.dev/writ/ca/admin"
	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/entry"
)

func validEntry(i int) *adminv1.Entry {
	return &adminv1.Entry{
		SpiffeId:  fmt.Sprintf("spiffe://example.org/workload/%d", i),
		ParentId:  agentID,
		Selectors: []string{"unix:uid:1000"},
	}
}

// create creates w and fails t unless that succeeds.
func (e *env) create(t *testing.T, w *adminv1.Entry) *adminv1.Entry {
	t.Helper()
	resp, err := e.entries.BatchCreateEntry(ctxT(t), &adminv1.BatchCreateEntryRequest{Entries: []*adminv1.Entry{w}})
	if err != nil {
		t.Fatalf("BatchCreateEntry: %v", err)
	}
	r := resp.GetResults()[0]
	if c := codes.Code(r.GetStatus().GetCode()); c != codes.OK {
		t.Fatalf("BatchCreateEntry result: %v %s", c, r.GetStatus().GetMessage())
	}
	return r.GetEntry()
}

// Malformed or non-canonical SPIFFE IDs, each refused wherever an ID in
// the trust domain is expected.
var badIDs = []struct{ name, id string }{
	{"empty", ""},
	{"uppercase trust domain", "spiffe://Example.org/w"},
	{"uppercase scheme", "SPIFFE://example.org/w"},
	{"dot-dot segment", "spiffe://example.org/a/../b"},
	{"dot segment", "spiffe://example.org/a/./b"},
	{"trailing slash", "spiffe://example.org/w/"},
	{"empty segment", "spiffe://example.org/a//b"},
	{"percent-encoding", "spiffe://example.org/a%20b"},
	{"other trust domain", "spiffe://other.org/w"},
	{"no path", "spiffe://example.org"},
	{"root path", "spiffe://example.org/"},
	{"query", "spiffe://example.org/w?x=1"},
	{"fragment", "spiffe://example.org/w#f"},
	{"userinfo", "spiffe://u@example.org/w"},
	{"port", "spiffe://example.org:8443/w"},
	{"control character", "spiffe://example.org/w\x1b[31m"},
	{"no scheme", "example.org/w"},
	{"too long", "spiffe://example.org/" + strings.Repeat("a", entry.MaxIDLength)},
}

var badSelectors = []struct{ name, sel string }{
	{"no type:value", "unix"},
	{"empty type", ":x"},
	{"empty value", "k8s:"},
	{"uppercase type", "UNIX:uid:1"},
	{"unknown unix key", "unix:foo:1"},
	{"unix key without value", "unix:uid"},
	{"uid with leading zero", "unix:uid:01"},
	{"uid out of range", "unix:uid:4294967296"},
	{"negative uid", "unix:uid:-1"},
	{"relative path", "unix:path:bin/sh"},
	{"unclean path", "unix:path:/a/../b"},
	{"uppercase sha256", "unix:sha256:" + strings.Repeat("A", 64)},
	{"control character", "k8s:ns:\x1b[31mred"},
	{"value too long", "k8s:" + strings.Repeat("a", entry.MaxSelectorValue+1)},
}

var badTTLs = []struct {
	name string
	ttl  int64
}{
	{"negative", -1},
	{"most negative", math.MinInt64},
	{"over a week", int64(entry.MaxTTL.Seconds()) + 1},
	{"absurd", 1 << 40},
	{"overflows a duration", math.MaxInt64},
}

var badDNSNames = []struct{ name, dns string }{
	{"empty", ""},
	{"uppercase", "Foo.example.org"},
	{"leading hyphen", "-a.example.org"},
	{"empty label", "a..example.org"},
	{"trailing dot", "a.example.org."},
	{"underscore", "a_b.example.org"},
	{"wildcard too wide", "*.org"},
	{"wildcard not leftmost", "a.*.example.org"},
	{"label too long", strings.Repeat("a", 64) + ".example.org"},
	{"control character", "a\x00.example.org"},
}

// badEntries lists every class of invalid entry, as an edit of a valid
// one, with the field its error must name.
func badEntries() []struct {
	name  string
	field string
	edit  func(*adminv1.Entry)
} {
	type tc = struct {
		name  string
		field string
		edit  func(*adminv1.Entry)
	}
	var tests []tc
	for _, b := range badIDs {
		tests = append(tests,
			tc{"spiffe_id " + b.name, "spiffe_id", func(w *adminv1.Entry) { w.SpiffeId = b.id }},
			tc{"parent_id " + b.name, "parent_id", func(w *adminv1.Entry) { w.ParentId = b.id }})
	}
	for _, b := range badSelectors {
		tests = append(tests, tc{"selector " + b.name, "selectors[1]", func(w *adminv1.Entry) {
			w.Selectors = []string{"unix:uid:1000", b.sel}
		}})
	}
	for _, b := range badTTLs {
		tests = append(tests,
			tc{"x509_svid_ttl " + b.name, "x509_svid_ttl", func(w *adminv1.Entry) { w.X509SvidTtl = b.ttl }},
			tc{"jwt_svid_ttl " + b.name, "jwt_svid_ttl", func(w *adminv1.Entry) { w.JwtSvidTtl = b.ttl }})
	}
	for _, b := range badDNSNames {
		tests = append(tests, tc{"dns_names " + b.name, "dns_names[0]", func(w *adminv1.Entry) { w.DnsNames = []string{b.dns} }})
	}
	return append(tests,
		tc{"server's own ID", "spiffe_id", func(w *adminv1.Entry) { w.SpiffeId = admin.ServerID(td).String() }},
		tc{"spiffe_id same as parent_id", "entry", func(w *adminv1.Entry) {
			w.SpiffeId, w.ParentId = "spiffe://example.org/same", "spiffe://example.org/same"
		}},
		// Agent IDs and workload IDs never collide: /writ/ is reserved.
		tc{"an agent's ID", "spiffe_id", func(w *adminv1.Entry) { w.SpiffeId = agent2ID }},
		tc{"an agent's ID under another agent", "spiffe_id", func(w *adminv1.Entry) {
			w.SpiffeId, w.ParentId = "spiffe://example.org/writ/agent/b", "spiffe://example.org/writ/agent/a"
		}},
		tc{"the reserved path itself", "spiffe_id", func(w *adminv1.Entry) { w.SpiffeId = "spiffe://example.org/writ" }},
		tc{"under the reserved path", "spiffe_id", func(w *adminv1.Entry) { w.SpiffeId = "spiffe://example.org/writ/web" }},
		tc{"no selectors", "entry", func(w *adminv1.Entry) { w.Selectors = nil }},
		tc{"duplicate selector", "entry", func(w *adminv1.Entry) { w.Selectors = []string{"unix:uid:1", "unix:uid:1"} }},
		tc{"too many selectors", "selectors", func(w *adminv1.Entry) {
			w.Selectors = nil
			for i := range entry.MaxSelectors + 1 {
				w.Selectors = append(w.Selectors, fmt.Sprintf("unix:uid:%d", i))
			}
		}},
		tc{"duplicate DNS name", "entry", func(w *adminv1.Entry) { w.DnsNames = []string{"a.example.org", "a.example.org"} }},
		tc{"too many DNS names", "dns_names", func(w *adminv1.Entry) {
			for i := range entry.MaxDNSNames + 1 {
				w.DnsNames = append(w.DnsNames, fmt.Sprintf("h%d.example.org", i))
			}
		}},
		tc{"id not a UUID", "id", func(w *adminv1.Entry) { w.Id = "entry-1" }},
		tc{"id uppercase UUID", "id", func(w *adminv1.Entry) { w.Id = "0A1B2C3D-0000-4000-8000-000000000000" }},
	)
}

// checkMessage fails t unless msg names field and is printable.
func checkMessage(t *testing.T, msg, field string) {
	t.Helper()
	if !strings.Contains(msg, field) {
		t.Errorf("message %q does not name field %q", msg, field)
	}
	for _, r := range msg {
		if !unicode.IsPrint(r) || r == unicode.ReplacementChar {
			t.Errorf("message %q has unprintable rune %U", msg, r)
			break
		}
	}
}

func TestBatchCreateEntry(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := ctxT(t)

	w := &adminv1.Entry{
		SpiffeId:    "spiffe://example.org/web",
		ParentId:    agentID,
		Selectors:   []string{"unix:uid:1000", "k8s:ns:prod", "unix:gid:5"},
		X509SvidTtl: 3600,
		JwtSvidTtl:  300,
		DnsNames:    []string{"web.example.org", "*.web.example.org"},
		Admin:       true,
		Downstream:  true,
		// Output-only fields are ignored.
		CreatedAt: 1,
		Revision:  99,
	}
	got := e.create(t, w)
	if _, err := entry.ParseEntryID(got.GetId()); err != nil {
		t.Errorf("created entry's id: %v", err)
	}
	want := &adminv1.Entry{
		Id:          got.GetId(),
		SpiffeId:    w.SpiffeId,
		ParentId:    w.ParentId,
		Selectors:   []string{"k8s:ns:prod", "unix:gid:5", "unix:uid:1000"},
		X509SvidTtl: 3600,
		JwtSvidTtl:  300,
		DnsNames:    w.DnsNames,
		Admin:       true,
		Downstream:  true,
		CreatedAt:   startTime.Unix(),
		Revision:    got.GetRevision(),
	}
	if !entriesEqual(got, want) {
		t.Errorf("created\n%v\nwant\n%v", got, want)
	}
	if got.GetRevision() == 0 {
		t.Error("created entry has revision 0")
	}
	fetched, err := e.entries.GetEntry(ctx, &adminv1.GetEntryRequest{Id: got.GetId()})
	if err != nil || !entriesEqual(fetched, got) {
		t.Errorf("GetEntry = %v, %v; want %v", fetched, err, got)
	}

	// A caller-chosen ID in canonical form is kept.
	const chosen = "0a1b2c3d-0000-4000-8000-000000000000"
	w2 := validEntry(1)
	w2.Id = chosen
	if got := e.create(t, w2); got.GetId() != chosen {
		t.Errorf("created id %q, want %q", got.GetId(), chosen)
	}
}

func entriesEqual(a, b *adminv1.Entry) bool {
	return a.GetId() == b.GetId() && a.GetSpiffeId() == b.GetSpiffeId() && a.GetParentId() == b.GetParentId() &&
		slices.Equal(a.GetSelectors(), b.GetSelectors()) && a.GetX509SvidTtl() == b.GetX509SvidTtl() &&
		a.GetJwtSvidTtl() == b.GetJwtSvidTtl() && slices.Equal(a.GetDnsNames(), b.GetDnsNames()) &&
		a.GetAdmin() == b.GetAdmin() && a.GetDownstream() == b.GetDownstream() &&
		a.GetCreatedAt() == b.GetCreatedAt() && a.GetRevision() == b.GetRevision()
}

func TestBatchCreateEntryInvalid(t *testing.T) {
	e := newEnv(t, envOptions{})
	for _, tt := range badEntries() {
		t.Run(tt.name, func(t *testing.T) {
			w := validEntry(0)
			tt.edit(w)
			resp, err := e.entries.BatchCreateEntry(ctxT(t), &adminv1.BatchCreateEntryRequest{Entries: []*adminv1.Entry{w}})
			if err != nil {
				t.Fatalf("BatchCreateEntry: %v", err)
			}
			r := resp.GetResults()[0]
			if c := codes.Code(r.GetStatus().GetCode()); c != codes.InvalidArgument {
				t.Fatalf("code %v (%s), want InvalidArgument", c, r.GetStatus().GetMessage())
			}
			if r.GetEntry() != nil {
				t.Errorf("refused item has an entry: %v", r.GetEntry())
			}
			checkMessage(t, r.GetStatus().GetMessage(), tt.field)
		})
	}
}

func TestBatchCreateEntryEscapesControlCharacters(t *testing.T) {
	e := newEnv(t, envOptions{})
	w := validEntry(0)
	w.Selectors = []string{"k8s:ns:\x1b[31mred"}
	resp, err := e.entries.BatchCreateEntry(ctxT(t), &adminv1.BatchCreateEntryRequest{Entries: []*adminv1.Entry{w}})
	if err != nil {
		t.Fatal(err)
	}
	msg := resp.GetResults()[0].GetStatus().GetMessage()
	if strings.Contains(msg, "\x1b") || !strings.Contains(msg, `\x1b[31mred`) {
		t.Errorf("message %q does not show the escape character escaped", msg)
	}
}

func TestBatchCreateEntryMixed(t *testing.T) {
	e := newEnv(t, envOptions{})
	existing := e.create(t, validEntry(0))

	bad := validEntry(2)
	bad.Selectors = []string{"unix:uid:01"}
	dupOfExisting := validEntry(0)
	req := &adminv1.BatchCreateEntryRequest{Entries: []*adminv1.Entry{
		validEntry(1),
		bad,
		dupOfExisting,
		validEntry(3),
		validEntry(3), // duplicate within the batch
		{Id: existing.GetId(), SpiffeId: "spiffe://example.org/other", ParentId: agentID, Selectors: []string{"k8s:ns:a"}},
	}}
	resp, err := e.entries.BatchCreateEntry(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	want := []codes.Code{codes.OK, codes.InvalidArgument, codes.AlreadyExists, codes.OK, codes.AlreadyExists, codes.AlreadyExists}
	if len(resp.GetResults()) != len(want) {
		t.Fatalf("%d results, want %d", len(resp.GetResults()), len(want))
	}
	for i, r := range resp.GetResults() {
		if c := codes.Code(r.GetStatus().GetCode()); c != want[i] {
			t.Errorf("result %d: %v (%s), want %v", i, c, r.GetStatus().GetMessage(), want[i])
		}
		if (r.GetEntry() != nil) != (want[i] == codes.OK) {
			t.Errorf("result %d: entry %v with code %v", i, r.GetEntry(), want[i])
		}
		if want[i] == codes.OK && r.GetEntry().GetSpiffeId() != req.Entries[i].SpiffeId {
			t.Errorf("result %d is for %s, want %s", i, r.GetEntry().GetSpiffeId(), req.Entries[i].SpiffeId)
		}
	}
}

func TestBatchCreateEntryLimits(t *testing.T) {
	e := newEnv(t, envOptions{})
	batch := func(n int) []*adminv1.Entry {
		out := make([]*adminv1.Entry, n)
		for i := range out {
			out[i] = validEntry(i)
		}
		return out
	}
	_, err := e.entries.BatchCreateEntry(ctxT(t), &adminv1.BatchCreateEntryRequest{Entries: batch(admin.MaxBatchCreate + 1)})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("oversize batch: %v, want InvalidArgument", err)
	}
	resp, err := e.entries.BatchCreateEntry(ctxT(t), &adminv1.BatchCreateEntryRequest{Entries: batch(admin.MaxBatchCreate)})
	if err != nil {
		t.Fatalf("full batch: %v", err)
	}
	for i, r := range resp.GetResults() {
		if r.GetStatus().GetCode() != 0 {
			t.Fatalf("full batch result %d: %v", i, r.GetStatus())
		}
	}
	resp, err = e.entries.BatchCreateEntry(ctxT(t), &adminv1.BatchCreateEntryRequest{})
	if err != nil || len(resp.GetResults()) != 0 {
		t.Errorf("empty batch = %v, %v; want no results", resp, err)
	}
}

func TestGetEntry(t *testing.T) {
	e := newEnv(t, envOptions{})
	created := e.create(t, validEntry(0))
	tests := []struct {
		name string
		id   string
		want codes.Code
	}{
		{"found", created.GetId(), codes.OK},
		{"unknown", "0a1b2c3d-0000-4000-8000-000000000000", codes.NotFound},
		{"empty", "", codes.InvalidArgument},
		{"not a UUID", "abc", codes.InvalidArgument},
		{"uppercase", strings.ToUpper(created.GetId()), codes.InvalidArgument},
		{"control character", "\x00" + created.GetId()[1:], codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := e.entries.GetEntry(ctxT(t), &adminv1.GetEntryRequest{Id: tt.id})
			if status.Code(err) != tt.want {
				t.Fatalf("GetEntry: %v, want %v", err, tt.want)
			}
			if tt.want == codes.InvalidArgument {
				checkMessage(t, status.Convert(err).Message(), "id")
			}
			if tt.want == codes.OK && !entriesEqual(got, created) {
				t.Errorf("GetEntry = %v, want %v", got, created)
			}
		})
	}
}

// listAll returns the pages ListEntries streams, or the stream's error.
func (e *env) listAll(t *testing.T, req *adminv1.ListEntriesRequest) ([][]*adminv1.Entry, error) {
	t.Helper()
	stream, err := e.entries.ListEntries(ctxT(t), req)
	if err != nil {
		return nil, err
	}
	var pages [][]*adminv1.Entry
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return pages, nil
		}
		if err != nil {
			return pages, err
		}
		pages = append(pages, resp.GetEntries())
	}
}

func TestListEntries(t *testing.T) {
	e := newEnv(t, envOptions{})
	const n = 2*admin.ListEntriesPageSize + 201
	var batch []*adminv1.Entry
	for i := range n {
		w := validEntry(i)
		if i%2 == 1 {
			w.ParentId = "spiffe://example.org/writ/agent/node2"
			w.Selectors = []string{"unix:uid:1000", "k8s:ns:odd"}
		}
		batch = append(batch, w)
	}
	if _, err := e.entries.BatchCreateEntry(ctxT(t), &adminv1.BatchCreateEntryRequest{Entries: batch}); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name  string
		req   *adminv1.ListEntriesRequest
		pages []int
	}{
		{"all", &adminv1.ListEntriesRequest{}, []int{500, 500, 201}},
		{"by spiffe_id", &adminv1.ListEntriesRequest{SpiffeId: "spiffe://example.org/workload/7"}, []int{1}},
		{"by parent_id", &adminv1.ListEntriesRequest{ParentId: "spiffe://example.org/writ/agent/node2"}, []int{500, 100}},
		{"by selectors", &adminv1.ListEntriesRequest{Selectors: []string{"k8s:ns:odd", "unix:uid:1000"}}, []int{500, 100}},
		{"by all", &adminv1.ListEntriesRequest{SpiffeId: "spiffe://example.org/workload/7", ParentId: agentID}, nil},
		{"none", &adminv1.ListEntriesRequest{Selectors: []string{"k8s:ns:none"}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pages, err := e.listAll(t, tt.req)
			if err != nil {
				t.Fatal(err)
			}
			var sizes []int
			seen := make(map[string]bool)
			for _, p := range pages {
				sizes = append(sizes, len(p))
				for _, en := range p {
					if seen[en.GetId()] {
						t.Errorf("entry %s listed twice", en.GetId())
					}
					seen[en.GetId()] = true
				}
			}
			if !slices.Equal(sizes, tt.pages) {
				t.Errorf("page sizes %v, want %v", sizes, tt.pages)
			}
		})
	}
}

func TestListEntriesInvalid(t *testing.T) {
	e := newEnv(t, envOptions{})
	type tc struct {
		name  string
		field string
		req   *adminv1.ListEntriesRequest
	}
	var tests []tc
	for _, b := range badIDs {
		if b.id == "" {
			continue // no filter
		}
		tests = append(tests,
			tc{"spiffe_id " + b.name, "spiffe_id", &adminv1.ListEntriesRequest{SpiffeId: b.id}},
			tc{"parent_id " + b.name, "parent_id", &adminv1.ListEntriesRequest{ParentId: b.id}})
	}
	for _, b := range badSelectors {
		tests = append(tests, tc{"selector " + b.name, "selectors[0]", &adminv1.ListEntriesRequest{Selectors: []string{b.sel}}})
	}
	many := make([]string, entry.MaxSelectors+1)
	for i := range many {
		many[i] = fmt.Sprintf("unix:uid:%d", i)
	}
	tests = append(tests, tc{"too many selectors", "selectors", &adminv1.ListEntriesRequest{Selectors: many}})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.listAll(t, tt.req)
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("ListEntries: %v, want InvalidArgument", err)
			}
			checkMessage(t, status.Convert(err).Message(), tt.field)
		})
	}
}

func TestUpdateEntry(t *testing.T) {
	e := newEnv(t, envOptions{})
	orig := e.create(t, &adminv1.Entry{
		SpiffeId:    "spiffe://example.org/web",
		ParentId:    agentID,
		Selectors:   []string{"unix:uid:1000"},
		X509SvidTtl: 3600,
		DnsNames:    []string{"web.example.org"},
	})
	other := e.create(t, validEntry(9))

	type tc struct {
		name  string
		entry *adminv1.Entry
		mask  []string
		want  codes.Code
		field string // named by an InvalidArgument message
		check func(t *testing.T, got *adminv1.Entry)
	}
	update := func(edit func(*adminv1.Entry)) *adminv1.Entry {
		w := &adminv1.Entry{Id: orig.GetId()}
		if edit != nil {
			edit(w)
		}
		return w
	}
	tests := []tc{
		{
			name: "selectors and ttl",
			entry: update(func(w *adminv1.Entry) {
				w.Selectors = []string{"unix:uid:2000", "k8s:ns:prod"}
				w.X509SvidTtl = 7200
				// Not in the mask: ignored, even though invalid.
				w.SpiffeId = "spiffe://Example.org/x"
				w.DnsNames = []string{"BAD"}
			}),
			mask: []string{"selectors", "x509_svid_ttl"},
			want: codes.OK,
			check: func(t *testing.T, got *adminv1.Entry) {
				if !slices.Equal(got.GetSelectors(), []string{"k8s:ns:prod", "unix:uid:2000"}) ||
					got.GetX509SvidTtl() != 7200 || got.GetSpiffeId() != orig.GetSpiffeId() ||
					!slices.Equal(got.GetDnsNames(), orig.GetDnsNames()) || got.GetCreatedAt() != orig.GetCreatedAt() ||
					got.GetRevision() <= orig.GetRevision() {
					t.Errorf("updated entry %v", got)
				}
			},
		},
		{
			name:  "clear ttl and dns names, set flags",
			entry: update(func(w *adminv1.Entry) { w.Admin = true; w.Downstream = true }),
			mask:  []string{"x509_svid_ttl", "dns_names", "admin", "downstream"},
			want:  codes.OK,
			check: func(t *testing.T, got *adminv1.Entry) {
				if got.GetX509SvidTtl() != 0 || len(got.GetDnsNames()) != 0 || !got.GetAdmin() || !got.GetDownstream() {
					t.Errorf("updated entry %v", got)
				}
			},
		},
		{
			name: "spiffe_id and parent_id",
			entry: update(func(w *adminv1.Entry) {
				w.SpiffeId = "spiffe://example.org/api"
				w.ParentId = "spiffe://example.org/writ/agent/node2"
			}),
			mask: []string{"parent_id", "spiffe_id"},
			want: codes.OK,
			check: func(t *testing.T, got *adminv1.Entry) {
				if got.GetSpiffeId() != "spiffe://example.org/api" || got.GetParentId() != "spiffe://example.org/writ/agent/node2" {
					t.Errorf("updated entry %v", got)
				}
			},
		},
		{name: "empty mask", entry: update(nil), want: codes.InvalidArgument, field: "update_mask"},
		{name: "unknown mask name", entry: update(nil), mask: []string{"bogus"}, want: codes.InvalidArgument, field: "update_mask"},
		{name: "output-only mask name", entry: update(nil), mask: []string{"created_at"}, want: codes.InvalidArgument, field: "update_mask"},
		{name: "id in mask", entry: update(nil), mask: []string{"id"}, want: codes.InvalidArgument, field: "update_mask"},
		{name: "mask name twice", entry: update(nil), mask: []string{"admin", "admin"}, want: codes.InvalidArgument, field: "update_mask"},
		{name: "mask name with control character", entry: update(nil), mask: []string{"admin\x00"}, want: codes.InvalidArgument, field: "update_mask"},
		{name: "no entry", mask: []string{"admin"}, want: codes.InvalidArgument, field: "entry"},
		{name: "no id", entry: &adminv1.Entry{Admin: true}, mask: []string{"admin"}, want: codes.InvalidArgument, field: "entry.id"},
		{name: "bad id", entry: &adminv1.Entry{Id: "x"}, mask: []string{"admin"}, want: codes.InvalidArgument, field: "entry.id"},
		{name: "unknown id", entry: &adminv1.Entry{Id: "0a1b2c3d-0000-4000-8000-000000000000"}, mask: []string{"admin"}, want: codes.NotFound},
		{name: "bad selector", entry: update(func(w *adminv1.Entry) { w.Selectors = []string{"unix:foo:1"} }), mask: []string{"selectors"}, want: codes.InvalidArgument, field: "selectors[0]"},
		{name: "no selectors", entry: update(nil), mask: []string{"selectors"}, want: codes.InvalidArgument, field: "entry"},
		{name: "bad ttl", entry: update(func(w *adminv1.Entry) { w.JwtSvidTtl = -5 }), mask: []string{"jwt_svid_ttl"}, want: codes.InvalidArgument, field: "jwt_svid_ttl"},
		{name: "bad dns name", entry: update(func(w *adminv1.Entry) { w.DnsNames = []string{"a..b"} }), mask: []string{"dns_names"}, want: codes.InvalidArgument, field: "dns_names[0]"},
		{name: "bad spiffe_id", entry: update(func(w *adminv1.Entry) { w.SpiffeId = "spiffe://example.org/a/../b" }), mask: []string{"spiffe_id"}, want: codes.InvalidArgument, field: "spiffe_id"},
		{name: "server's own ID", entry: update(func(w *adminv1.Entry) { w.SpiffeId = admin.ServerID(td).String() }), mask: []string{"spiffe_id"}, want: codes.InvalidArgument, field: "spiffe_id"},
		{name: "spiffe_id same as parent_id", entry: update(func(w *adminv1.Entry) {
			w.SpiffeId, w.ParentId = "spiffe://example.org/same", "spiffe://example.org/same"
		}), mask: []string{"spiffe_id", "parent_id"}, want: codes.InvalidArgument, field: "entry"},
		{name: "an agent's ID", entry: update(func(w *adminv1.Entry) { w.SpiffeId = agent2ID }), mask: []string{"spiffe_id"}, want: codes.InvalidArgument, field: "spiffe_id"},
		{
			name: "duplicate of another entry",
			entry: update(func(w *adminv1.Entry) {
				w.SpiffeId, w.ParentId, w.Selectors = other.GetSpiffeId(), other.GetParentId(), other.GetSelectors()
			}),
			mask: []string{"spiffe_id", "parent_id", "selectors"},
			want: codes.AlreadyExists,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, err := e.entries.GetEntry(ctxT(t), &adminv1.GetEntryRequest{Id: orig.GetId()})
			if err != nil {
				t.Fatal(err)
			}
			got, err := e.entries.UpdateEntry(ctxT(t), &adminv1.UpdateEntryRequest{Entry: tt.entry, UpdateMask: tt.mask})
			if status.Code(err) != tt.want {
				t.Fatalf("UpdateEntry: %v, want %v", err, tt.want)
			}
			if tt.field != "" {
				checkMessage(t, status.Convert(err).Message(), tt.field)
			}
			if tt.check != nil {
				tt.check(t, got)
			}
			after, err := e.entries.GetEntry(ctxT(t), &adminv1.GetEntryRequest{Id: orig.GetId()})
			if err != nil {
				t.Fatal(err)
			}
			if tt.want == codes.OK {
				if !entriesEqual(after, got) {
					t.Errorf("stored %v, returned %v", after, got)
				}
			} else if !entriesEqual(after, before) {
				t.Errorf("failed update changed the entry from %v to %v", before, after)
			}
		})
	}
}

func TestDeleteEntry(t *testing.T) {
	e := newEnv(t, envOptions{})
	created := e.create(t, validEntry(0))
	tests := []struct {
		name string
		id   string
		want codes.Code
	}{
		{"existing", created.GetId(), codes.OK},
		{"again", created.GetId(), codes.NotFound},
		{"unknown", "0a1b2c3d-0000-4000-8000-000000000000", codes.NotFound},
		{"empty", "", codes.InvalidArgument},
		{"not a UUID", "../x", codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := e.entries.DeleteEntry(ctxT(t), &adminv1.DeleteEntryRequest{Id: tt.id})
			if status.Code(err) != tt.want {
				t.Fatalf("DeleteEntry: %v, want %v", err, tt.want)
			}
			if tt.want == codes.OK && !entriesEqual(got, created) {
				t.Errorf("DeleteEntry = %v, want %v", got, created)
			}
		})
	}
	if _, err := e.entries.GetEntry(ctxT(t), &adminv1.GetEntryRequest{Id: created.GetId()}); status.Code(err) != codes.NotFound {
		t.Errorf("GetEntry after delete: %v, want NotFound", err)
	}
}

func TestErrorMessagesBounded(t *testing.T) {
	e := newEnv(t, envOptions{})
	huge := strings.Repeat("é", 100_000)
	w := validEntry(0)
	w.Selectors = []string{huge} // no type:value; the parser quotes it whole
	resp, err := e.entries.BatchCreateEntry(ctxT(t), &adminv1.BatchCreateEntryRequest{Entries: []*adminv1.Entry{w}})
	if err != nil {
		t.Fatal(err)
	}
	msg := resp.GetResults()[0].GetStatus().GetMessage()
	if len(msg) > 512 || !utf8.ValidString(msg) {
		t.Errorf("message of %d bytes (valid UTF-8: %v), want at most 512", len(msg), utf8.ValidString(msg))
	}
	checkMessage(t, msg, "selectors[0]")

	_, err = e.entries.UpdateEntry(ctxT(t), &adminv1.UpdateEntryRequest{
		Entry:      &adminv1.Entry{Id: "0a1b2c3d-0000-4000-8000-000000000000"},
		UpdateMask: []string{huge},
	})
	if status.Code(err) != codes.InvalidArgument || len(status.Convert(err).Message()) > 512 {
		t.Errorf("UpdateEntry with a huge mask name: %v", err)
	}
}

// TestUpdateEntryConcurrentFields updates two fields of one entry from two
// callers at once: each update is merged into the entry as stored, so
// neither undoes the other's field.
func TestUpdateEntryConcurrentFields(t *testing.T) {
	e := newEnv(t, envOptions{})
	orig := e.create(t, validEntry(1))
	const rounds = 20
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range rounds {
			_, err := e.entries.UpdateEntry(ctxT(t), &adminv1.UpdateEntryRequest{
				Entry:      &adminv1.Entry{Id: orig.GetId(), X509SvidTtl: int64(3600 + i)},
				UpdateMask: []string{"x509_svid_ttl"},
			})
			if err != nil {
				t.Errorf("UpdateEntry x509_svid_ttl: %v", err)
				return
			}
		}
	})
	wg.Go(func() {
		for i := range rounds {
			_, err := e.entries.UpdateEntry(ctxT(t), &adminv1.UpdateEntryRequest{
				Entry:      &adminv1.Entry{Id: orig.GetId(), DnsNames: []string{fmt.Sprintf("n%d.example.org", i)}},
				UpdateMask: []string{"dns_names"},
			})
			if err != nil {
				t.Errorf("UpdateEntry dns_names: %v", err)
				return
			}
		}
	})
	wg.Wait()
	got, err := e.entries.GetEntry(ctxT(t), &adminv1.GetEntryRequest{Id: orig.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetX509SvidTtl() != 3600+rounds-1 || !slices.Equal(got.GetDnsNames(), []string{fmt.Sprintf("n%d.example.org", rounds-1)}) {
		t.Errorf("after concurrent updates: x509_svid_ttl %d, dns_names %v; want %d and the last name", got.GetX509SvidTtl(), got.GetDnsNames(), 3600+rounds-1)
	}
}
