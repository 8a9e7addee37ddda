package main

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/internal/testca"
)

func statusError(msg string) error { return status.Error(codes.Unavailable, msg) }

func sampleAgents() []*adminv1.Agent {
	return []*adminv1.Agent{
		{
			SpiffeId:        "spiffe://example.org/writ/agent/node1",
			AttestationType: "join_token",
			SerialNumber:    "129481203948120398",
			CertNotAfter:    fakeCreatedAt + 3600,
			CreatedAt:       fakeCreatedAt,
			UpdatedAt:       fakeCreatedAt + 1800,
		},
		{
			SpiffeId:        "spiffe://example.org/writ/agent/node2",
			AttestationType: "x509pop",
			SerialNumber:    "77",
			CertNotAfter:    fakeCreatedAt + 7200,
			Banned:          true,
			CreatedAt:       fakeCreatedAt,
			UpdatedAt:       fakeCreatedAt,
		},
	}
}

func TestAgent(t *testing.T) {
	node1 := "spiffe://example.org/writ/agent/node1"
	for _, c := range []struct {
		name string
		args []string
	}{
		{"agent_list", []string{"agent", "list"}},
		{"agent_show", []string{"agent", "show", "--spiffe-id", node1}},
		{"agent_evict", []string{"agent", "evict", "--spiffe-id", node1}},
		{"agent_ban", []string{"agent", "ban", "--spiffe-id", node1}},
		{"agent_unban", []string{"agent", "unban", "--spiffe-id", "spiffe://example.org/writ/agent/node2"}},
	} {
		for _, output := range []string{"text", "json"} {
			t.Run(c.name+"."+output, func(t *testing.T) {
				f := startFake(t)
				f.setAgents(sampleAgents())
				r := runCLI(t, "", f.args(append(c.args, "--output", output)...)...)
				if r.code != 0 || r.stderr != "" {
					t.Fatalf("%+v", r)
				}
				golden(t, c.name+"."+output, r.stdout)
			})
		}
	}

	t.Run("not found", func(t *testing.T) {
		f := startFake(t)
		r := runCLI(t, "", f.args("agent", "ban", "--spiffe-id", node1)...)
		if want := (cliResult{stderr: "writ: agent not found\n", code: 1}); r != want {
			t.Errorf("got %+v, want %+v", r, want)
		}
	})
}

func TestTokenGenerate(t *testing.T) {
	f := startFake(t)
	r := runCLI(t, "", f.args("token", "generate", "--spiffe-id", "spiffe://example.org/writ/agent/node3", "--ttl", "10m")...)
	if want := (cliResult{stdout: "2b6f0cc904d137be2e1730235f5664094b831186\n"}); r != want {
		t.Errorf("got %+v, want the token alone: %+v", r, want)
	}
	f.mu.Lock()
	req := f.lastToken
	f.mu.Unlock()
	if req.GetSpiffeId() != "spiffe://example.org/writ/agent/node3" || req.GetTtl() != 600 {
		t.Errorf("request %v", req)
	}

	r = runCLI(t, "", f.args("token", "generate", "--spiffe-id", "spiffe://example.org/writ/agent/node3", "--output", "json")...)
	if r.code != 0 {
		t.Fatalf("%+v", r)
	}
	golden(t, "token_generate.json", r.stdout)
	f.mu.Lock()
	req = f.lastToken
	f.mu.Unlock()
	if req.GetTtl() != 0 {
		t.Errorf("ttl %d without --ttl, want 0 (the server's default)", req.GetTtl())
	}
}

// mintCA makes a self-signed CA certificate for td.
func mintCA(t *testing.T, td spiffeid.TrustDomain) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	ca := testca.New(t, td, time.Now(), time.Hour)
	return ca.Cert, ca.Key
}

func TestBundleShow(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	ca1, key := mintCA(t, td)
	ca2, _ := mintCA(t, td)
	b := spiffebundle.New(td)
	b.AddX509Authority(ca1)
	b.AddX509Authority(ca2)
	if err := b.AddJWTAuthority("key-1", key.Public()); err != nil {
		t.Fatal(err)
	}
	b.SetSequenceNumber(7)
	b.SetRefreshHint(5 * time.Minute)
	data, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	f := startFake(t)
	f.setBundle(&adminv1.GetBundleResponse{TrustDomain: "example.org", SpiffeBundle: data, Sequence: 7})

	t.Run("pem", func(t *testing.T) {
		for _, args := range [][]string{{"bundle", "show"}, {"bundle", "show", "--format", "pem"}} {
			r := runCLI(t, "", f.args(args...)...)
			if r.code != 0 || r.stderr != "" {
				t.Fatalf("%+v", r)
			}
			rest := []byte(r.stdout)
			var got []*x509.Certificate
			for {
				var blk *pem.Block
				blk, rest = pem.Decode(rest)
				if blk == nil {
					break
				}
				if blk.Type != "CERTIFICATE" {
					t.Errorf("PEM block %q", blk.Type)
				}
				c, err := x509.ParseCertificate(blk.Bytes)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, c)
			}
			if len(strings.TrimSpace(string(rest))) != 0 || len(got) != 2 || !got[0].Equal(ca1) || !got[1].Equal(ca2) {
				t.Errorf("%s: got %d certificates, rest %q", args, len(got), rest)
			}
		}
	})

	for _, args := range [][]string{
		{"bundle", "show", "--format", "spiffe"},
		{"bundle", "show", "--output", "json"},
		{"bundle", "show", "--output", "json", "--format", "spiffe"},
	} {
		t.Run(strings.Join(args[2:], " "), func(t *testing.T) {
			r := runCLI(t, "", f.args(args...)...)
			if r.code != 0 || r.stderr != "" {
				t.Fatalf("%+v", r)
			}
			got, err := spiffebundle.Parse(td, []byte(r.stdout))
			if err != nil {
				t.Fatalf("output does not parse: %v\n%s", err, r.stdout)
			}
			if !got.Equal(b) {
				t.Errorf("bundle differs:\n%s", r.stdout)
			}
			if !strings.Contains(r.stdout, "\n  ") {
				t.Errorf("not indented:\n%s", r.stdout)
			}
		})
	}

	t.Run("invalid bundle from server", func(t *testing.T) {
		f := startFake(t)
		f.setBundle(&adminv1.GetBundleResponse{TrustDomain: "example.org", SpiffeBundle: []byte(`{"keys":[{"use":"x509-svid"}]}`)})
		r := runCLI(t, "", f.args("bundle", "show")...)
		if r.code != 1 || !strings.HasPrefix(r.stderr, "writ: the server sent an invalid bundle: ") {
			t.Errorf("%+v", r)
		}
	})
}

// errorOf returns "writ: " and the message of err, as the CLI prints it.
func errorOf(_ any, err error) string {
	if err == nil {
		panic("no error")
	}
	return "writ: " + err.Error() + "\n"
}

// validateErr returns what Validate says of e, normalized, in the trust
// domain of its SPIFFE ID.
func validateErr(e *entry.Entry) error {
	e.Normalize()
	err := e.Validate(e.SPIFFEID.TrustDomain())
	if err == nil {
		panic("entry is valid")
	}
	return err
}

func mustID(s string) spiffeid.ID { return spiffeid.RequireFromString(s) }

func TestBadInputRefusedBeforeDialing(t *testing.T) {
	const (
		web   = "spiffe://example.org/web"
		agent = "spiffe://example.org/writ/agent/node1"
		id    = "6f1c7a52-3c7e-4a51-9a53-0d2f1d0c9e11"
	)
	create := func(extra ...string) []string {
		return append([]string{"entry", "create", "--spiffe-id", web, "--parent-id", agent, "--selector", "unix:uid:1000"}, extra...)
	}
	sel := func(s string) entry.Selector { v, _ := entry.ParseSelector(s); return v }
	usage := func(cmd string) string { return "Run 'writ " + cmd + " --help' for usage.\n" }

	tests := []struct {
		name       string
		args       []string
		stdin      string
		wantCode   int
		wantStderr string // exact
	}{
		// Values checked with the shared parsers: exit 1, the parser's message.
		{"non-canonical SPIFFE ID", []string{"entry", "create", "--spiffe-id", "spiffe://Example.org/web", "--parent-id", agent, "--selector", "unix:uid:1"},
			"", 1, errorOf(entry.ParseID("spiffe://Example.org/web"))},
		{"dot-dot parent ID", []string{"entry", "create", "--spiffe-id", web, "--parent-id", "spiffe://example.org/a/../b", "--selector", "unix:uid:1"},
			"", 1, errorOf(entry.ParseID("spiffe://example.org/a/../b"))},
		{"selector without type", create("--selector", "uid1000"), "", 1, errorOf(entry.ParseSelector("uid1000"))},
		{"unix selector with leading zero", create("--selector", "unix:uid:01"), "", 1, errorOf(entry.ParseSelector("unix:uid:01"))},
		{"selector with control character", create("--selector", "docker:label:a\x1bb"), "", 1, errorOf(entry.ParseSelector("docker:label:a\x1bb"))},
		{"selector with space kept", create("--selector", " unix:uid:1"), "", 1, errorOf(entry.ParseSelector(" unix:uid:1"))},
		{"uppercase DNS name", create("--dns-name", "Web.example.org"), "", 1, errorOf(entry.ParseDNSName("Web.example.org"))},
		{"fractional X509 TTL", create("--x509-ttl", "1500ms"), "", 1, errorOf(entry.ParseTTL("1500ms"))},
		{"zero JWT TTL", create("--jwt-ttl", "0"), "", 1, errorOf(entry.ParseTTL("0"))},
		{"too long TTL", create("--x509-ttl", "169h"), "", 1, errorOf(entry.ParseTTL("169h"))},
		{"SPIFFE ID is parent ID", []string{"entry", "create", "--spiffe-id", web, "--parent-id", web, "--selector", "unix:uid:1"},
			"", 1, errorOf(nil, validateErr(&entry.Entry{SPIFFEID: mustID(web), ParentID: mustID(web), Selectors: []entry.Selector{sel("unix:uid:1")}}))},
		{"parent in another trust domain", []string{"entry", "create", "--spiffe-id", web, "--parent-id", "spiffe://other.org/agent", "--selector", "unix:uid:1"},
			"", 1, "writ: invalid: parent ID \"spiffe://other.org/agent\" and SPIFFE ID \"" + web + "\" are in different trust domains\n"},
		{"SPIFFE ID without path", []string{"entry", "create", "--spiffe-id", "spiffe://example.org", "--parent-id", agent, "--selector", "unix:uid:1"},
			"", 1, errorOf(nil, validateErr(&entry.Entry{SPIFFEID: mustID("spiffe://example.org"), ParentID: mustID(agent), Selectors: []entry.Selector{sel("unix:uid:1")}}))},
		{"empty SPIFFE ID", []string{"entry", "create", "--spiffe-id", "", "--parent-id", agent, "--selector", "unix:uid:1"},
			"", 1, errorOf(nil, validateErr(&entry.Entry{ParentID: mustID(agent), Selectors: []entry.Selector{sel("unix:uid:1")}}))},
		{"duplicate selector", create("--selector", "unix:uid:1000"),
			"", 1, errorOf(nil, validateErr(&entry.Entry{SPIFFEID: mustID(web), ParentID: mustID(agent), Selectors: []entry.Selector{sel("unix:uid:1000"), sel("unix:uid:1000")}}))},
		{"duplicate DNS name", create("--dns-name", "a.example.org", "--dns-name", "a.example.org"),
			"", 1, errorOf(nil, validateErr(&entry.Entry{SPIFFEID: mustID(web), ParentID: mustID(agent), Selectors: []entry.Selector{sel("unix:uid:1000")}, DNSNames: []string{"a.example.org", "a.example.org"}}))},
		{"show bad entry ID", []string{"entry", "show", "--id", "6F1C7A52-3C7E-4A51-9A53-0D2F1D0C9E11"}, "", 1, errorOf(entry.ParseEntryID("6F1C7A52-3C7E-4A51-9A53-0D2F1D0C9E11"))},
		{"delete bad entry ID", []string{"entry", "delete", "--id", "42"}, "", 1, errorOf(entry.ParseEntryID("42"))},
		{"update bad entry ID", []string{"entry", "update", "--id", "x", "--admin"}, "", 1, errorOf(entry.ParseEntryID("x"))},
		{"update bad selector", []string{"entry", "update", "--id", id, "--selector", "unix:bogus:1"}, "", 1, errorOf(entry.ParseSelector("unix:bogus:1"))},
		{"update duplicate selectors", []string{"entry", "update", "--id", id, "--selector", "k8s:ns:a", "--selector", "k8s:ns:a"},
			"", 1, errorOf(nil, validateErr(&entry.Entry{SPIFFEID: mustID(web), ParentID: mustID(agent), Selectors: []entry.Selector{sel("k8s:ns:a"), sel("k8s:ns:a")}}))},
		{"update SPIFFE ID to parent ID", []string{"entry", "update", "--id", id, "--spiffe-id", agent, "--parent-id", agent},
			"", 1, errorOf(nil, validateErr(&entry.Entry{SPIFFEID: mustID(agent), ParentID: mustID(agent), Selectors: []entry.Selector{sel("k8s:ns:a")}}))},
		{"update SPIFFE ID without path", []string{"entry", "update", "--id", id, "--spiffe-id", "spiffe://example.org"},
			"", 1, errorOf(nil, validateErr(&entry.Entry{SPIFFEID: mustID("spiffe://example.org"), ParentID: mustID(agent), Selectors: []entry.Selector{sel("k8s:ns:a")}}))},
		{"update bad TTL", []string{"entry", "update", "--id", id, "--jwt-ttl", "5 m"}, "", 1, errorOf(entry.ParseTTL("5 m"))},
		{"list bad SPIFFE ID", []string{"entry", "list", "--spiffe-id", "spiffe://example.org/a/"}, "", 1, errorOf(entry.ParseID("spiffe://example.org/a/"))},
		{"list bad selector", []string{"entry", "list", "--selector", "Unix:uid:1"}, "", 1, errorOf(entry.ParseSelector("Unix:uid:1"))},
		{"token ID without path", []string{"token", "generate", "--spiffe-id", "spiffe://example.org"},
			"", 1, errorOf(entry.ParseIDInDomain(spiffeid.RequireTrustDomainFromString("example.org"), "spiffe://example.org"))},
		{"token bad TTL", []string{"token", "generate", "--spiffe-id", agent, "--ttl", "10y"}, "", 1, errorOf(entry.ParseTTL("10y"))},
		{"agent bad ID", []string{"agent", "evict", "--spiffe-id", "spiffe://example.org/%61"}, "", 1, errorOf(entry.ParseID("spiffe://example.org/%61"))},
		{"agent ban without path", []string{"agent", "ban", "--spiffe-id", "spiffe://example.org"},
			"", 1, errorOf(entry.ParseIDInDomain(spiffeid.RequireTrustDomainFromString("example.org"), "spiffe://example.org"))},

		// Import files: checked whole before anything is sent; the
		// entries read before a syntax error are checked too.
		{"import: not an array", []string{"entry", "create", "--file", "-"}, `{"spiffe_id": "x"}`, 1,
			"writ: stdin:1: want a JSON array of entries\n"},
		{"import: empty", []string{"entry", "create", "--file", "-"}, "  \n", 1,
			"writ: stdin: empty: want a JSON array of entries\n"},
		{"import: unknown field", []string{"entry", "create", "--file", "-"}, "[\n{\"spiffe_id\": \"spiffe://example.org/a\"},\n  {\"spiffe_id\": \"spiffe://example.org/a\", \"ttl\": 5}\n]", 1,
			"writ: entry 0 (spiffe_id spiffe://example.org/a): invalid: entry has no parent ID\nwrit: stdin:3: entry 1: unknown field \"ttl\"\n"},
		{"import: duplicate key", []string{"entry", "create", "--file", "-"}, "[\n{\"spiffe_id\": \"spiffe://example.org/a\"},\n {\"spiffe_id\": \"spiffe://example.org/a\",\n  \"selectors\": [], \"spiffe_id\": \"spiffe://example.org/b\"}\n]", 1,
			"writ: entry 0 (spiffe_id spiffe://example.org/a): invalid: entry has no parent ID\nwrit: stdin:3: entry 1: field \"spiffe_id\" is given twice\n"},
		{"import: duplicate escaped key", []string{"entry", "create", "--file", "-"}, `[{"admin": true, "\u0061dmin": false}]`, 1,
			"writ: stdin:1: entry 0: field \"admin\" is given twice\n"},
		{"import: key in another case", []string{"entry", "create", "--file", "-"}, `[{"Spiffe_ID": "spiffe://example.org/a"}]`, 1,
			"writ: stdin:1: entry 0: unknown field \"Spiffe_ID\"\n"},
		{"import: null entry", []string{"entry", "create", "--file", "-"}, `[null]`, 1,
			"writ: stdin:1: entry 0: want a JSON object, got null\n"},
		{"import: wrong type", []string{"entry", "create", "--file", "-"}, `[{"x509_svid_ttl": "1h"}]`, 1,
			"writ: stdin:1: entry 0: x509_svid_ttl: want a whole number, got string\n"},
		{"import: fractional seconds", []string{"entry", "create", "--file", "-"}, `[{"jwt_svid_ttl": 1.5}]`, 1,
			"writ: stdin:1: entry 0: jwt_svid_ttl: want a whole number, got number 1.5\n"},
		{"import: not an object", []string{"entry", "create", "--file", "-"}, `[1]`, 1,
			"writ: stdin:1: entry 0: want a JSON object, got number\n"},
		{"import: syntax error", []string{"entry", "create", "--file", "-"}, "[\n{\"spiffe_id\": \"spiffe://example.org/a\"}\n{}]", 1,
			"writ: entry 0 (spiffe_id spiffe://example.org/a): invalid: entry has no parent ID\nwrit: stdin:3: entry 1: expected comma after array element\n"},
		{"import: truncated", []string{"entry", "create", "--file", "-"}, `[{"spiffe_id": "spiffe://ex`, 1,
			"writ: stdin:1: entry 0: unexpected end of input\n"},
		{"import: data after the array", []string{"entry", "create", "--file", "-"}, `[] []`, 1,
			"writ: stdin:1: unexpected data after the array of entries\n"},
		{"import: invalid entries", []string{"entry", "create", "--file", "-"},
			`[{"spiffe_id": "spiffe://example.org/a", "parent_id": "` + agent + `", "selectors": ["unix:uid:1"]},
			  {"spiffe_id": "spiffe://example.org/b", "parent_id": "` + agent + `", "selectors": ["unix:uid:x"]},
			  {"parent_id": "` + agent + `", "selectors": ["unix:uid:1"], "x509_svid_ttl": -5}]`, 1,
			"writ: entry 1 (spiffe_id spiffe://example.org/b): " + errorOf(entry.ParseSelector("unix:uid:x"))[len("writ: "):] +
				"writ: entry 2 (no spiffe_id): " + errorOf(entry.ParseTTL("-5"))[len("writ: "):] +
				"writ: stdin: 2 of 3 entries are invalid; none were sent\n"},
		{"import: missing file", []string{"entry", "create", "--file", filepath.Join(os.TempDir(), "writ-no-such-file.json")}, "", 1,
			"writ: open " + filepath.Join(os.TempDir(), "writ-no-such-file.json") + ": no such file or directory\n"},

		// Malformed command lines: exit 2.
		{"unknown output", []string{"entry", "list", "--output", "yaml"}, "", 2,
			"writ: unknown --output \"yaml\": want text or json\n" + usage("entry list")},
		{"uppercase output", []string{"token", "generate", "--spiffe-id", agent, "--output", "JSON"}, "", 2,
			"writ: unknown --output \"JSON\": want text or json\n" + usage("token generate")},
		{"unknown flag", []string{"entry", "list", "--spiffeid", web}, "", 2,
			"writ: flag provided but not defined: -spiffeid\n" + usage("entry list")},
		{"unknown command", []string{"entry", "remove"}, "", 2, "writ: unknown command \"remove\"\n" + usage("entry")},
		{"positional argument", []string{"entry", "show", id}, "", 2, "writ: unexpected argument \"" + id + "\"\n" + usage("entry show")},
		{"missing --id", []string{"entry", "show"}, "", 2, "writ: missing required flag --id\n" + usage("entry show")},
		{"missing --selector", []string{"entry", "create", "--spiffe-id", web, "--parent-id", agent}, "", 2,
			"writ: missing required flag --selector (or --file)\n" + usage("entry create")},
		{"file and flags", []string{"entry", "create", "--file", "x.json", "--admin=false"}, "", 2,
			"writ: --file cannot be combined with --admin: give entries either in the file or as flags\n" + usage("entry create")},
		{"update nothing", []string{"entry", "update", "--id", id}, "", 2,
			"writ: nothing to update: give at least one of --spiffe-id, --parent-id, --selector, --x509-ttl, --jwt-ttl, --dns-name, --admin, --downstream, --federates-with\n" + usage("entry update")},
		{"update DNS names and clear", []string{"entry", "update", "--id", id, "--dns-name", "a.example.org", "--clear-dns-names"}, "", 2,
			"writ: --clear-dns-names cannot be combined with --dns-name\n" + usage("entry update")},
		{"bad bool", []string{"entry", "update", "--id", id, "--admin=maybe"}, "", 2,
			"writ: invalid boolean value \"maybe\" for -admin: parse error\n" + usage("entry update")},
		{"agent without ID", []string{"agent", "ban"}, "", 2, "writ: missing required flag --spiffe-id\n" + usage("agent ban")},
		{"token without ID", []string{"token", "generate"}, "", 2, "writ: missing required flag --spiffe-id\n" + usage("token generate")},
		{"zero timeout", []string{"agent", "list", "--timeout", "0s"}, "", 2, "writ: --timeout must be positive\n" + usage("agent list")},
		{"unknown bundle format", []string{"bundle", "show", "--format", "der"}, "", 2,
			"writ: unknown --format \"der\": want pem or spiffe\n" + usage("bundle show")},
		{"pem as JSON", []string{"bundle", "show", "--format", "pem", "--output", "json"}, "", 2,
			"writ: --format pem cannot be printed as JSON: use --format spiffe\n" + usage("bundle show")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t)
			r := runCLI(t, tt.stdin, f.args(tt.args...)...)
			if r.code != tt.wantCode || r.stderr != tt.wantStderr || r.stdout != "" {
				t.Errorf("got code %d, stdout %q, stderr\n%q\nwant code %d, stderr\n%q", r.code, r.stdout, r.stderr, tt.wantCode, tt.wantStderr)
			}
			if calls := f.callNames(); len(calls) != 0 {
				t.Errorf("server received %v; bad input must be refused before any call", calls)
			}
		})
	}
}

func TestServerErrorsEscaped(t *testing.T) {
	f := startFake(t)
	f.setFail(status.Error(codes.PermissionDenied, "caller uid 1000 \x1b[2Jis not an admin\r\n\u009b1m"))
	r := runCLI(t, "", f.args("agent", "list")...)
	want := cliResult{stderr: `writ: caller uid 1000 \x1b[2Jis not an admin\r\n\u009b1m` + "\n", code: 1}
	if r != want {
		t.Errorf("got %+v, want %+v", r, want)
	}
}

// hasControl reports whether s has a control character other than '\n',
// or invalid UTF-8.
func hasControl(s string) bool {
	if !utf8.ValidString(s) {
		return true
	}
	for _, r := range s {
		if r < 0x20 && r != '\n' || r == 0x7f || r >= 0x80 && r < 0xa0 {
			return true
		}
	}
	return false
}

func TestOutputEscapesControlCharacters(t *testing.T) {
	f := startFake(t)
	evil := &adminv1.Entry{
		Id:        "6f1c7a52-3c7e-4a51-9a53-0d2f1d0c9e11\x1b]0;owned\x07",
		SpiffeId:  "spiffe://example.org/\x1b[2Jweb",
		ParentId:  "spiffe://example.org/writ/agent\r\x7f",
		Selectors: []string{"docker:label:\u009b31m", "unix:path:/bin/\u0085x"},
		DnsNames:  []string{"a\x00.example.org"},
	}
	f.seed(evil)
	f.setAgents([]*adminv1.Agent{{SpiffeId: "spiffe://example.org/writ/agent\x1b[1m", AttestationType: "x\tpop", SerialNumber: "1\u0085"}})

	for _, args := range [][]string{
		{"entry", "list"},
		{"entry", "list", "--output", "json"},
		{"agent", "list"},
		{"agent", "list", "--output", "json"},
	} {
		r := runCLI(t, "", f.args(args...)...)
		if r.code != 0 {
			t.Errorf("%v: %+v", args, r)
		}
		if hasControl(r.stdout) || hasControl(r.stderr) {
			t.Errorf("%v: control characters in output:\n%q\n%q", args, r.stdout, r.stderr)
		}
		if strings.Contains(args[len(args)-1], "json") {
			var v any
			if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
				t.Errorf("%v: invalid JSON: %v", args, err)
			}
		}
	}

	// JSON escapes keep the values: they decode to what the server sent.
	r := runCLI(t, "", f.args("entry", "list", "--output", "json")...)
	var got []jsonEntry
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatal(err)
	}
	if got[0].SPIFFEID != evil.SpiffeId || got[0].ParentID != evil.ParentId || got[0].Selectors[0] != evil.Selectors[0] {
		t.Errorf("values changed: %+v", got[0])
	}
}

func TestEscapeJSONControls(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"clean", `{"a": "b\u001b"}`, `{"a": "b\u001b"}`},
		{"DEL", "\"a\x7fb\"", `"a\u007fb"`},
		{"C1", "\"\u009b31m\u0085\"", `"\u009b31m\u0085"`},
		{"invalid UTF-8", "\"a\xffb\"", `"a\ufffdb"`},
		{"other non-ASCII kept", `"é ☃ \u00a0"`, `"é ☃ \u00a0"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(escapeJSONControls([]byte(tt.in)))
			if got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			var a, b any
			if json.Unmarshal([]byte(tt.in), &a) == nil {
				if err := json.Unmarshal([]byte(got), &b); err != nil || !reflect.DeepEqual(a, b) {
					t.Errorf("meaning changed: %v -> %v (%v)", a, b, err)
				}
			}
		})
	}
}

func TestFormatTTLSeconds(t *testing.T) {
	for secs, want := range map[int64]string{0: "default", 1: "1s", 90: "1m30s", 300: "5m", 3600: "1h", 5400: "1h30m", 3661: "1h1m1s", 604800: "168h"} {
		got := formatTTLSeconds(secs)
		if got != want {
			t.Errorf("formatTTLSeconds(%d) = %q, want %q", secs, got, want)
		}
		if secs > 0 {
			if d, err := entry.ParseTTL(got); err != nil || d != time.Duration(secs)*time.Second {
				t.Errorf("ParseTTL(%q) = %v, %v", got, d, err)
			}
		}
	}
}

func TestAdminSocketDefault(t *testing.T) {
	f := startFake(t)
	f.setAgents(sampleAgents())

	t.Run("WRIT_DATA_DIR", func(t *testing.T) {
		// The fake's socket is a.sock; link admin.sock to it.
		dir := filepath.Dir(f.socket)
		if err := os.Symlink(f.socket, filepath.Join(dir, adminSocketFile)); err != nil {
			t.Fatal(err)
		}
		t.Setenv(adminSocketEnv, "")
		t.Setenv(dataDirEnv, dir)
		if r := runCLI(t, "", "agent", "list"); r.code != 0 {
			t.Errorf("%+v", r)
		}
	})
	t.Run("WRIT_ADMIN_SOCKET", func(t *testing.T) {
		t.Setenv(dataDirEnv, "/nonexistent")
		t.Setenv(adminSocketEnv, f.socket)
		if r := runCLI(t, "", "agent", "list"); r.code != 0 {
			t.Errorf("%+v", r)
		}
	})
	t.Run("default", func(t *testing.T) {
		t.Setenv(dataDirEnv, "")
		t.Setenv(adminSocketEnv, "")
		t.Chdir(t.TempDir())
		r := runCLI(t, "", "agent", "list")
		want := cliResult{stderr: "writ: cannot connect to the admin socket writ-data/admin.sock: no such file or directory\n", code: 1}
		if r != want {
			t.Errorf("got %+v, want %+v", r, want)
		}
	})
}

func TestUnknownCommands(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"bogus"}, "writ: unknown command \"bogus\"\nRun 'writ --help' for usage.\n"},
		{[]string{"agent", "kick"}, "writ: unknown command \"kick\"\nRun 'writ agent --help' for usage.\n"},
		{[]string{"bundle", "get"}, "writ: unknown command \"get\"\nRun 'writ bundle --help' for usage.\n"},
		{[]string{"--bogus"}, "writ: flag provided but not defined: -bogus\nRun 'writ --help' for usage.\n"},
	} {
		if r := runCLI(t, "", tt.args...); r != (cliResult{stderr: tt.want, code: 2}) {
			t.Errorf("%v: got %+v, want stderr %q", tt.args, r, tt.want)
		}
	}
}

func TestGroupCommandsShowHelp(t *testing.T) {
	for _, args := range [][]string{{}, {"entry"}, {"agent"}, {"token"}, {"bundle"}, {"entry", "--help"}} {
		r := runCLI(t, "", args...)
		if r.code != 0 || !strings.Contains(r.stdout, "USAGE:") || r.stderr != "" {
			t.Errorf("%v: %+v", args, r)
		}
	}
}

// TestDefaultAdminSocketTrust: with neither --admin-socket,
// $WRIT_ADMIN_SOCKET nor $WRIT_DATA_DIR, the admin socket is
// writ-data/admin.sock under the working directory; in a directory other
// users can write to, any of them could serve it and receive the
// commands, so it is refused before any connection. Named by the user,
// or under a directory only this user or root controls, it is dialed.
func TestDefaultAdminSocketTrust(t *testing.T) {
	root, err := os.MkdirTemp("", "wa")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	shared := filepath.Join(root, "shared")
	if err := os.MkdirAll(filepath.Join(shared, "writ-data"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(shared, 0o777); err != nil { // writable by all, not sticky
		t.Fatal(err)
	}
	f := startFakeAt(t, filepath.Join(shared, "writ-data", "admin.sock"))
	f.setAgents(sampleAgents())
	t.Setenv(adminSocketEnv, "")
	t.Setenv(dataDirEnv, "")
	os.Unsetenv(adminSocketEnv)
	os.Unsetenv(dataDirEnv)
	t.Chdir(shared)

	r := runCLI(t, "", "agent", "list")
	if r.code == 0 || !strings.Contains(r.stderr, "refusing the default admin socket writ-data/admin.sock") {
		t.Fatalf("default socket in a shared directory: %+v; want it refused", r)
	}
	if calls := f.callNames(); len(calls) != 0 {
		t.Fatalf("calls reached the refused socket: %v", calls)
	}

	// Named by the user: dialed.
	if r := runCLI(t, "", f.args("agent", "list")...); r.code != 0 {
		t.Fatalf("named socket: %+v", r)
	}
	// The default under directories no other user can write to: dialed.
	if err := os.Chmod(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	if r := runCLI(t, "", "agent", "list"); r.code != 0 {
		t.Fatalf("default socket in a private directory: %+v", r)
	}
}
