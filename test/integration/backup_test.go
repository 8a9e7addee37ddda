package integration_test

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestIntegrationBackupRestore takes a backup of a running server with an
// attested agent, loses the server's data directory, restores it into a
// new one and starts the server there: the trust domain, CA, entries and
// agent are the same, and the agent goes on through the restored server
// without attesting again.
func TestIntegrationBackupRestore(t *testing.T) {
	e := newNodeEnv(t)
	agentID := "spiffe://example.org/writ/agent/a"
	a := startAgent(t, e.addr, filepath.Join(e.dir, "a"), e.bundle, e.token(agentID))
	e.entry("spiffe://example.org/web", agentID)
	waitSVIDs(t, a, []string{"spiffe://example.org/web"})
	e.server.admin("oauth", "client", "create", "--spiffe-id", "spiffe://example.org/web", "--audience", "orders", "--scope", "read")
	e.server.admin("oauth", "revoke", "--client-id", "spiffe://example.org/web")
	bundle := e.server.admin("bundle", "show")

	file := filepath.Join(e.dir, "writ.backup")
	var got struct {
		File        string   `json:"file"`
		Bytes       int64    `json:"bytes"`
		TrustDomain string   `json:"trust_domain"`
		ServerID    string   `json:"server_id"`
		KeyManager  string   `json:"key_manager"`
		KeyIDs      []string `json:"key_ids"`
	}
	e.server.adminJSON(&got, "server", "backup", "--file", file)
	serverID, _ := os.ReadFile(filepath.Join(e.server.dataDir, "server-id"))
	if got.File != file || got.TrustDomain != "example.org" || got.ServerID != strings.TrimSpace(string(serverID)) || got.KeyManager != "disk" || len(got.KeyIDs) != 2 {
		t.Fatalf("backup printed %+v", got)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != got.Bytes {
		t.Fatalf("backup file: %v %v (printed %d bytes)", fi.Mode(), err, got.Bytes)
	}
	if !a.healthy() {
		t.Fatal("agent lost its health during the backup")
	}

	// The server and its data directory are lost.
	e.server.kill()
	if err := os.RemoveAll(e.server.dataDir); err != nil {
		t.Fatal(err)
	}
	restored := filepath.Join(e.dir, "restored")
	out, errOut, code := runWrit(t, nil, "server", "restore", "--file", file, "--data-dir", restored)
	if code != 0 || !strings.Contains(out, "trust domain example.org") {
		t.Fatalf("restore: exit %d: %s%s", code, out, errOut)
	}
	// A second restore into the same directory is refused.
	if _, errOut, code := runWrit(t, nil, "server", "restore", "--file", file, "--data-dir", restored); code == 0 || !strings.Contains(errOut, "not empty") {
		t.Fatalf("restore over a restored directory: exit %d %q", code, errOut)
	}

	s := startServer(t, restored, "--bind-address", e.addr)
	if got := s.admin("bundle", "show"); got != bundle {
		t.Fatal("the restored server publishes another bundle")
	}
	if ids := entryIDsOf(t, s); !slices.Equal(ids, []string{"spiffe://example.org/web"}) {
		t.Fatalf("restored entries: %v", ids)
	}
	if out := s.admin("oauth", "client", "show", "--spiffe-id", "spiffe://example.org/web"); !strings.Contains(out, "orders") || !strings.Contains(out, "read") {
		t.Fatalf("restored OAuth client: %q", out)
	}
	e.server = s
	if ids := e.agentIDs(); !slices.Equal(ids, []string{agentID}) {
		t.Fatalf("restored agents: %v", ids)
	}
	// The agent reconnects with its SVID, gets a new entry through the
	// restored server, and never attests again.
	e.entry("spiffe://example.org/api", agentID)
	waitSVIDs(t, a, []string{"spiffe://example.org/api", "spiffe://example.org/web"})
	if n := strings.Count(a.log.String(), "agent attested"); n != 1 {
		t.Fatalf("agent attested %d times, want once (before the backup)", n)
	}
}

func entryIDsOf(t *testing.T, s *serverProc) []string {
	t.Helper()
	var entries []jsonEntry
	s.adminJSON(&entries, "entry", "list")
	var ids []string
	for _, e := range entries {
		ids = append(ids, e.SPIFFEID)
	}
	slices.Sort(ids)
	return ids
}

// TestIntegrationRestoreRefusesBadArchives: a file that is not a Writ
// backup, or one with a member outside the data directory, is refused and
// leaves nothing behind.
func TestIntegrationRestoreRefusesBadArchives(t *testing.T) {
	dir := shortTempDir(t)
	manifest, _ := json.Marshal(map[string]any{"format": 1, "trust_domain": "example.org", "server_id": "abc"})
	n := 0
	archive := func(members ...[2]string) string {
		n++
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, m := range members {
			tw.WriteHeader(&tar.Header{Name: m[0], Mode: 0o600, Size: int64(len(m[1])), Typeflag: tar.TypeReg})
			tw.Write([]byte(m[1]))
		}
		tw.Close()
		path := filepath.Join(dir, "a"+strconv.Itoa(n)+".tar")
		if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	cases := map[string]struct {
		file string
		want string
	}{
		"not an archive":     {file: writeTemp(t, dir, "plain text\n"), want: "not a Writ backup"},
		"no manifest first":  {file: archive([2]string{"datastore.db", "x"}), want: "not a Writ backup"},
		"path traversal":     {file: archive([2]string{"writ-backup.json", string(manifest)}, [2]string{"../evil", "x"}), want: "unexpected member"},
		"key outside keys/":  {file: archive([2]string{"writ-backup.json", string(manifest)}, [2]string{"keys/../../evil.pem", "x"}), want: "unexpected member"},
		"incomplete":         {file: archive([2]string{"writ-backup.json", string(manifest)}), want: "incomplete"},
		"not a bbolt file":   {file: archive([2]string{"writ-backup.json", string(manifest)}, [2]string{"server-id", "abc\n"}, [2]string{"datastore.db", "junk"}), want: "datastore"},
		"server ID mismatch": {file: archive([2]string{"writ-backup.json", string(manifest)}, [2]string{"server-id", "other\n"}), want: "does not match"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			target := filepath.Join(dir, "target")
			_, errOut, code := runWrit(t, nil, "server", "restore", "--file", tc.file, "--data-dir", target)
			if code == 0 || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d %q, want a refusal naming %q", code, errOut, tc.want)
			}
			left, _ := os.ReadDir(target)
			if len(left) != 0 {
				t.Fatalf("refused restore left %v in the data directory", left)
			}
			if _, err := os.Stat(filepath.Join(dir, "evil")); err == nil {
				t.Fatal("a member was written outside the data directory")
			}
		})
	}
}

func writeTemp(t *testing.T, dir, content string) string {
	t.Helper()
	path := filepath.Join(dir, "plain")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
