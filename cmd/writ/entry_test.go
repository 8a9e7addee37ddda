package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
)

// sampleEntries are stored in the fake for the read commands' tests.
func sampleEntries() []*adminv1.Entry {
	return []*adminv1.Entry{
		{
			Id:          "6f1c7a52-3c7e-4a51-9a53-0d2f1d0c9e11",
			SpiffeId:    "spiffe://example.org/web",
			ParentId:    "spiffe://example.org/writ/agent/node1",
			Selectors:   []string{"unix:gid:100", "unix:uid:1000"},
			X509SvidTtl: 3600,
			JwtSvidTtl:  300,
			DnsNames:    []string{"web.example.org", "www.example.org"},
			CreatedAt:   fakeCreatedAt,
			Revision:    3,
		},
		{
			Id:         "0a9e2f4b-7d1c-4c2e-8f3a-5b6d7e8f9a0b",
			SpiffeId:   "spiffe://example.org/db",
			ParentId:   "spiffe://example.org/writ/agent/node2",
			Selectors:  []string{"unix:user:postgres"},
			Admin:      true,
			Downstream: true,
			CreatedAt:  fakeCreatedAt + 60,
			Revision:   1,
		},
		{
			Id:          "c3d4e5f6-a7b8-4c9d-8e0f-1a2b3c4d5e6f",
			SpiffeId:    "spiffe://example.org/web",
			ParentId:    "spiffe://example.org/writ/agent/node2",
			Selectors:   []string{"unix:uid:1000"},
			X509SvidTtl: 5400,
			CreatedAt:   fakeCreatedAt + 120,
			Revision:    1,
		},
	}
}

func TestEntryCreate(t *testing.T) {
	f := startFake(t)
	flags := []string{"entry", "create",
		"--spiffe-id", "spiffe://example.org/web",
		"--parent-id", "spiffe://example.org/writ/agent/node1",
		"--selector", "unix:uid:1000",
		"--selector", "unix:gid:100",
		"--x509-ttl", "1h",
		"--jwt-ttl", "300",
		"--dns-name", "web.example.org",
		"--admin",
	}

	r := runCLI(t, "", f.args(flags...)...)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("code %d, stderr %q", r.code, r.stderr)
	}
	if want := fakeEntryID(1) + "\n"; r.stdout != want {
		t.Errorf("text output %q, want only the ID %q", r.stdout, want)
	}
	golden(t, "entry_create.text", r.stdout)

	f.mu.Lock()
	got := proto.Clone(f.entries[0]).(*adminv1.Entry)
	f.mu.Unlock()
	want := &adminv1.Entry{
		Id:          fakeEntryID(1),
		SpiffeId:    "spiffe://example.org/web",
		ParentId:    "spiffe://example.org/writ/agent/node1",
		Selectors:   []string{"unix:gid:100", "unix:uid:1000"}, // normalized
		X509SvidTtl: 3600,
		JwtSvidTtl:  300,
		DnsNames:    []string{"web.example.org"},
		Admin:       true,
		CreatedAt:   fakeCreatedAt,
		Revision:    1,
	}
	if !proto.Equal(got, want) {
		t.Errorf("server got %v, want %v", got, want)
	}

	// The same entry again, with JSON output: the server refuses it.
	r = runCLI(t, "", f.args(append(flags, "--output", "json")...)...)
	if r.code != 1 || r.stderr != "writ: similar entry already exists\n" || r.stdout != "" {
		t.Errorf("duplicate: got %+v", r)
	}

	flags[3] = "spiffe://example.org/api"
	r = runCLI(t, "", f.args(append(flags, "--output", "json")...)...)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("code %d, stderr %q", r.code, r.stderr)
	}
	golden(t, "entry_create.json", r.stdout)
	var je jsonEntry
	if err := json.Unmarshal([]byte(r.stdout), &je); err != nil || je.ID != fakeEntryID(2) {
		t.Errorf("json output: %v, %+v", err, je)
	}
}

// writeFile writes content to a file in a temporary directory.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

const importFile = `[
  {
    "spiffe_id": "spiffe://example.org/a",
    "parent_id": "spiffe://example.org/writ/agent/node1",
    "selectors": ["unix:uid:1001"],
    "x509_svid_ttl": 600
  },
  {
    "id": "6f1c7a52-3c7e-4a51-9a53-0d2f1d0c9e11",
    "spiffe_id": "spiffe://example.org/web",
    "parent_id": "spiffe://example.org/writ/agent/node1",
    "selectors": ["unix:uid:1000", "unix:gid:100"],
    "x509_svid_ttl": 3600,
    "jwt_svid_ttl": 300,
    "dns_names": ["web.example.org", "www.example.org"],
    "admin": false,
    "downstream": false,
    "created_at": 1700000000,
    "revision": 3
  },
  {
    "spiffe_id": "spiffe://example.org/b",
    "parent_id": "spiffe://example.org/writ/agent/node1",
    "selectors": ["docker:label:app:b"],
    "dns_names": ["b.example.org"],
    "downstream": true
  }
]
`

func TestEntryImport(t *testing.T) {
	for _, output := range []string{"text", "json"} {
		t.Run(output, func(t *testing.T) {
			f := startFake(t)
			f.seed(sampleEntries()[0]) // the file's second entry is a duplicate of it
			path := writeFile(t, "entries.json", importFile)

			r := runCLI(t, "", f.args("entry", "create", "--file", path, "--output", output)...)
			if r.code != 1 {
				t.Errorf("exit code %d, want 1 (an entry failed)", r.code)
			}
			golden(t, "entry_import."+output, r.stdout)
			wantErr := ""
			if output == "json" {
				wantErr = "writ: 1 of 3 entries failed\n"
			}
			if r.stderr != wantErr {
				t.Errorf("stderr %q, want %q (no progress: not a terminal)", r.stderr, wantErr)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if len(f.entries) != 3 || !slices.Equal(f.batchSizes, []int{3}) {
				t.Errorf("server has %d entries after batches %v, want 3 after [3]", len(f.entries), f.batchSizes)
			}
		})
	}
}

func TestEntryImportRoundTrip(t *testing.T) {
	// What `entry list --output json` prints, `entry create --file -`
	// reads back (IDs, times and revisions are ignored).
	src := startFake(t)
	src.seed(sampleEntries()...)
	list := runCLI(t, "", src.args("entry", "list", "--output", "json")...)
	if list.code != 0 {
		t.Fatalf("list: %+v", list)
	}
	dst := startFake(t)
	r := runCLI(t, list.stdout, dst.args("entry", "create", "--file", "-")...)
	if r.code != 0 || r.stdout != "created 3 of 3 entries\n" || r.stderr != "" {
		t.Fatalf("import: %+v", r)
	}
	dst.mu.Lock()
	defer dst.mu.Unlock()
	for i, e := range sampleEntries() {
		got := dst.entries[i]
		e.Id, e.CreatedAt, e.Revision = got.Id, got.CreatedAt, got.Revision
		if !proto.Equal(got, e) {
			t.Errorf("entry %d: got %v, want %v", i, got, e)
		}
	}
}

func TestEntryImportLarge(t *testing.T) {
	f := startFake(t)
	const n = 10_000
	entries := make([]jsonEntry, n)
	for i := range entries {
		entries[i] = jsonEntry{
			SPIFFEID:    fmt.Sprintf("spiffe://example.org/workload/%d", i),
			ParentID:    "spiffe://example.org/writ/agent/node1",
			Selectors:   []string{fmt.Sprintf("unix:uid:%d", 10000+i), "unix:gid:100"},
			X509SVIDTTL: 3600,
			DNSNames:    []string{fmt.Sprintf("w%d.example.org", i)},
		}
	}
	data, err := json.Marshal(entries)
	if err != nil {
		t.Fatal(err)
	}
	path := writeFile(t, "big.json", string(data))

	var stdout strings.Builder
	var stderr terminalBuffer
	start := time.Now()
	code := run(t.Context(), append([]string{"writ"}, f.args("entry", "create", "--file", path)...), strings.NewReader(""), &stdout, &stderr)
	elapsed := time.Since(start)
	if code != 0 || stdout.String() != "created 10000 of 10000 entries\n" {
		t.Fatalf("code %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	// The rate is measured by make bench, not asserted here.
	t.Logf("imported %d entries in %v", n, elapsed)
	f.mu.Lock()
	sizes := slices.Clone(f.batchSizes)
	f.mu.Unlock()
	if want := slices.Repeat([]int{1000}, 10); !slices.Equal(sizes, want) {
		t.Errorf("batch sizes %v, want %v", sizes, want)
	}
	// Progress on a terminal: carriage returns, ending with the total.
	progress := stderr.String()
	if !strings.HasPrefix(progress, "\rimported 1000/10000") || !strings.HasSuffix(progress, "\rimported 10000/10000\n") {
		t.Errorf("progress %q", progress)
	}
}

func TestEntryImportBatchFails(t *testing.T) {
	f := startFake(t)
	f.setFail(statusError("datastore unavailable"))
	path := writeFile(t, "entries.json", importFile)
	r := runCLI(t, "", f.args("entry", "create", "--file", path)...)
	want := cliResult{
		stdout: "created 0 of 3 entries\n",
		stderr: "writ: import stopped at entry 0 of 3: datastore unavailable\n",
		code:   1,
	}
	if r != want {
		t.Errorf("got %+v, want %+v", r, want)
	}
}

func TestEntryList(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		want  *adminv1.ListEntriesRequest
		count int
	}{
		{
			name:  "all",
			want:  &adminv1.ListEntriesRequest{},
			count: 3,
		},
		{
			name:  "by SPIFFE ID",
			args:  []string{"--spiffe-id", "spiffe://example.org/web"},
			want:  &adminv1.ListEntriesRequest{SpiffeId: "spiffe://example.org/web"},
			count: 2,
		},
		{
			name:  "by parent ID",
			args:  []string{"--parent-id", "spiffe://example.org/writ/agent/node2"},
			want:  &adminv1.ListEntriesRequest{ParentId: "spiffe://example.org/writ/agent/node2"},
			count: 2,
		},
		{
			name: "by all",
			args: []string{"--spiffe-id", "spiffe://example.org/web", "--parent-id", "spiffe://example.org/writ/agent/node1",
				"--selector", "unix:uid:1000", "--selector", "unix:gid:100"},
			want: &adminv1.ListEntriesRequest{
				SpiffeId:  "spiffe://example.org/web",
				ParentId:  "spiffe://example.org/writ/agent/node1",
				Selectors: []string{"unix:uid:1000", "unix:gid:100"},
			},
			count: 1,
		},
		{
			name:  "selector with comma kept whole",
			args:  []string{"--selector", "docker:label:a,b"},
			want:  &adminv1.ListEntriesRequest{Selectors: []string{"docker:label:a,b"}},
			count: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t)
			f.seed(sampleEntries()...)
			r := runCLI(t, "", f.args(append([]string{"entry", "list", "--output", "json"}, tt.args...)...)...)
			if r.code != 0 {
				t.Fatalf("%+v", r)
			}
			f.mu.Lock()
			got := f.lastList
			f.mu.Unlock()
			if !proto.Equal(got, tt.want) {
				t.Errorf("request %v, want %v", got, tt.want)
			}
			var out []jsonEntry
			if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || len(out) != tt.count {
				t.Errorf("got %d entries (%v), want %d", len(out), err, tt.count)
			}
		})
	}
}

func TestEntryReadGolden(t *testing.T) {
	f := startFake(t)
	f.seed(sampleEntries()...)
	for _, c := range []struct {
		name string
		args []string
	}{
		{"entry_list", []string{"entry", "list"}},
		{"entry_list_empty", []string{"entry", "list", "--selector", "unix:uid:4"}},
		{"entry_show", []string{"entry", "show", "--id", sampleEntries()[0].Id}},
	} {
		for _, output := range []string{"text", "json"} {
			t.Run(c.name+"."+output, func(t *testing.T) {
				r := runCLI(t, "", f.args(append(c.args, "--output", output)...)...)
				if r.code != 0 || r.stderr != "" {
					t.Fatalf("%+v", r)
				}
				golden(t, c.name+"."+output, r.stdout)
			})
		}
	}
}

func TestEntryShowNotFound(t *testing.T) {
	f := startFake(t)
	r := runCLI(t, "", f.args("entry", "show", "--id", fakeEntryID(9))...)
	if want := (cliResult{stderr: "writ: entry not found\n", code: 1}); r != want {
		t.Errorf("got %+v, want %+v", r, want)
	}
}

func TestEntryUpdate(t *testing.T) {
	id := sampleEntries()[0].Id
	tests := []struct {
		name     string
		args     []string
		wantMask []string
		want     *adminv1.Entry // fields sent
	}{
		{
			name:     "SPIFFE ID",
			args:     []string{"--spiffe-id", "spiffe://example.org/web2"},
			wantMask: []string{"spiffe_id"},
			want:     &adminv1.Entry{SpiffeId: "spiffe://example.org/web2"},
		},
		{
			name:     "admin false",
			args:     []string{"--admin=false"},
			wantMask: []string{"admin"},
			want:     &adminv1.Entry{},
		},
		{
			name:     "admin and downstream true",
			args:     []string{"--admin", "--downstream=true"},
			wantMask: []string{"admin", "downstream"},
			want:     &adminv1.Entry{Admin: true, Downstream: true},
		},
		{
			name:     "selectors replaced, sorted",
			args:     []string{"--selector", "unix:uid:7", "--selector", "docker:label:a,b"},
			wantMask: []string{"selectors"},
			want:     &adminv1.Entry{Selectors: []string{"docker:label:a,b", "unix:uid:7"}},
		},
		{
			name:     "TTLs and DNS names",
			args:     []string{"--dns-name", "a.example.org", "--x509-ttl", "2h", "--jwt-ttl", "120", "--dns-name", "b.example.org"},
			wantMask: []string{"x509_svid_ttl", "jwt_svid_ttl", "dns_names"},
			want:     &adminv1.Entry{X509SvidTtl: 7200, JwtSvidTtl: 120, DnsNames: []string{"a.example.org", "b.example.org"}},
		},
		{
			name:     "clear DNS names",
			args:     []string{"--clear-dns-names"},
			wantMask: []string{"dns_names"},
			want:     &adminv1.Entry{},
		},
		{
			name: "everything",
			args: []string{"--downstream=false", "--admin", "--dns-name", "x.example.org", "--jwt-ttl", "60",
				"--x509-ttl", "60", "--selector", "k8s:ns:default", "--parent-id", "spiffe://example.org/writ/agent/node9",
				"--spiffe-id", "spiffe://example.org/x"},
			wantMask: []string{"spiffe_id", "parent_id", "selectors", "x509_svid_ttl", "jwt_svid_ttl", "dns_names", "admin", "downstream"},
			want: &adminv1.Entry{
				SpiffeId: "spiffe://example.org/x", ParentId: "spiffe://example.org/writ/agent/node9",
				Selectors: []string{"k8s:ns:default"}, X509SvidTtl: 60, JwtSvidTtl: 60,
				DnsNames: []string{"x.example.org"}, Admin: true,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t)
			f.seed(sampleEntries()...)
			r := runCLI(t, "", f.args(append([]string{"entry", "update", "--id", id, "--output", "json"}, tt.args...)...)...)
			if r.code != 0 || r.stderr != "" {
				t.Fatalf("%+v", r)
			}
			f.mu.Lock()
			got := f.lastUpdate
			f.mu.Unlock()
			if !slices.Equal(got.GetUpdateMask(), tt.wantMask) {
				t.Errorf("mask %v, want %v", got.GetUpdateMask(), tt.wantMask)
			}
			want := proto.Clone(tt.want).(*adminv1.Entry)
			want.Id = id
			if !proto.Equal(got.GetEntry(), want) {
				t.Errorf("entry sent %v, want %v", got.GetEntry(), want)
			}
			var out jsonEntry
			if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || out.ID != id || out.Revision != 4 {
				t.Errorf("output %q: %v", r.stdout, err)
			}
		})
	}

	t.Run("text", func(t *testing.T) {
		f := startFake(t)
		f.seed(sampleEntries()...)
		r := runCLI(t, "", f.args("entry", "update", "--id", id, "--admin")...)
		if r.code != 0 {
			t.Fatalf("%+v", r)
		}
		golden(t, "entry_update.text", r.stdout)
	})
}

func TestEntryDelete(t *testing.T) {
	f := startFake(t)
	f.seed(sampleEntries()...)
	id := sampleEntries()[1].Id
	r := runCLI(t, "", f.args("entry", "delete", "--id", id)...)
	if want := (cliResult{stdout: "deleted entry " + id + "\n"}); r != want {
		t.Errorf("got %+v, want %+v", r, want)
	}
	r = runCLI(t, "", f.args("entry", "delete", "--id", sampleEntries()[0].Id, "--output", "json")...)
	if r.code != 0 {
		t.Fatalf("%+v", r)
	}
	golden(t, "entry_delete.json", r.stdout)
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.entries) != 1 {
		t.Errorf("%d entries left, want 1", len(f.entries))
	}
}
