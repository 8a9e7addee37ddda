package integration_test

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"writ.dev/writ/internal/testuser"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func TestIntegrationServerLifecycle(t *testing.T) {
	data := filepath.Join(shortTempDir(t), "data")
	p := startServer(t, data)

	// State on disk is private.
	for path, want := range map[string]os.FileMode{data: 0o700, filepath.Join(data, "keys"): 0o700, filepath.Join(data, "datastore.db"): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %04o, want %04o", path, fi.Mode().Perm(), want)
		}
	}
	keys, _ := filepath.Glob(filepath.Join(data, "keys", "*.pem"))
	if len(keys) != 2 {
		t.Fatalf("want an X.509 CA key and a JWT key, found %v", keys)
	}
	for _, k := range keys {
		if fi, _ := os.Stat(k); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %04o", k, fi.Mode().Perm())
		}
	}

	// Create: text prints the ID alone; json prints the entry.
	id := strings.TrimSpace(p.admin("entry", "create", "--spiffe-id", "spiffe://example.org/web", "--parent-id", "spiffe://example.org/writ/agent/a", "--selector", "unix:uid:1000"))
	if len(id) != 36 || strings.Contains(id, "\n") {
		t.Fatalf("entry create printed %q, want an entry ID", id)
	}
	var created jsonEntry
	p.adminJSON(&created, "entry", "create", "--spiffe-id", "spiffe://example.org/db", "--parent-id", "spiffe://example.org/writ/agent/b",
		"--selector", "unix:uid:1001", "--selector", "unix:gid:50", "--x509-ttl", "30m", "--jwt-ttl", "2m", "--dns-name", "db.example.org", "--admin")
	want := jsonEntry{ID: created.ID, SPIFFEID: "spiffe://example.org/db", ParentID: "spiffe://example.org/writ/agent/b", Selectors: []string{"unix:gid:50", "unix:uid:1001"},
		X509SVIDTTL: 1800, JWTSVIDTTL: 120, DNSNames: []string{"db.example.org"}, Admin: true}
	if fmt.Sprint(created) != fmt.Sprint(want) {
		t.Fatalf("created entry\n got %+v\nwant %+v", created, want)
	}

	// List, text and json, with each filter.
	if out := p.admin("entry", "list"); !strings.Contains(out, "spiffe://example.org/web") || !strings.Contains(out, "spiffe://example.org/db") {
		t.Fatalf("entry list (text) lacks entries:\n%s", out)
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{nil, []string{created.ID, id}},
		{[]string{"--spiffe-id", "spiffe://example.org/web"}, []string{id}},
		{[]string{"--parent-id", "spiffe://example.org/writ/agent/b"}, []string{created.ID}},
		{[]string{"--selector", "unix:gid:50"}, []string{created.ID}},
		{[]string{"--selector", "unix:uid:9"}, nil},
	} {
		var got []jsonEntry
		p.adminJSON(&got, append([]string{"entry", "list"}, tc.args...)...)
		var ids []string
		for _, e := range got {
			ids = append(ids, e.ID)
		}
		slices.Sort(ids)
		slices.Sort(tc.want)
		if !slices.Equal(ids, tc.want) {
			t.Errorf("entry list %v = %v, want %v", tc.args, ids, tc.want)
		}
	}

	// Show, update, delete.
	var shown jsonEntry
	p.adminJSON(&shown, "entry", "show", "--id", id)
	if shown.SPIFFEID != "spiffe://example.org/web" {
		t.Fatalf("show: %+v", shown)
	}
	var updated jsonEntry
	p.adminJSON(&updated, "entry", "update", "--id", id, "--x509-ttl", "20m", "--dns-name", "web.example.org")
	if updated.X509SVIDTTL != 1200 || !slices.Equal(updated.DNSNames, []string{"web.example.org"}) || updated.SPIFFEID != "spiffe://example.org/web" || !slices.Equal(updated.Selectors, []string{"unix:uid:1000"}) {
		t.Fatalf("update changed the wrong fields: %+v", updated)
	}
	p.admin("entry", "delete", "--id", created.ID)
	if _, errOut, code := runWrit(t, nil, "entry", "show", "--id", created.ID, "--admin-socket", p.socket); code == 0 || !strings.Contains(strings.ToLower(errOut), "not found") {
		t.Fatalf("show deleted entry: exit %d, %q", code, errOut)
	}

	// Join tokens are fresh and printed alone.
	tok1 := strings.TrimSpace(p.admin("token", "generate", "--spiffe-id", "spiffe://example.org/writ/agent/c"))
	tok2 := strings.TrimSpace(p.admin("token", "generate", "--spiffe-id", "spiffe://example.org/writ/agent/c", "--ttl", "1m"))
	if len(tok1) < 32 || tok1 == tok2 || strings.ContainsAny(tok1, " \n") {
		t.Fatalf("tokens %q, %q", tok1, tok2)
	}

	// The bundle, as PEM and as a SPIFFE bundle go-spiffe parses.
	pemOut := p.admin("bundle", "show")
	block, _ := pem.Decode([]byte(pemOut))
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("bundle show: no certificate:\n%s", pemOut)
	}
	spiffeOut := p.admin("bundle", "show", "--format", "spiffe")
	b, err := spiffebundle.Parse(td, []byte(spiffeOut))
	if err != nil {
		t.Fatalf("spiffebundle.Parse: %v\n%s", err, spiffeOut)
	}
	if len(b.X509Authorities()) != 1 || len(b.JWTAuthorities()) != 1 {
		t.Fatalf("bundle has %d X.509 and %d JWT authorities, want 1 and 1", len(b.X509Authorities()), len(b.JWTAuthorities()))
	}
	ca := b.X509Authorities()[0]
	if !ca.IsCA || len(ca.URIs) != 1 || ca.URIs[0].String() != "spiffe://example.org" {
		t.Fatalf("CA certificate: IsCA=%v URIs=%v", ca.IsCA, ca.URIs)
	}
	if seq, ok := b.SequenceNumber(); !ok || seq == 0 {
		t.Fatalf("bundle sequence %d, %v", seq, ok)
	}

	// Restart: everything as it was, same CA.
	var before []jsonEntry
	p.adminJSON(&before, "entry", "list")
	p.stop()
	if _, err := os.Stat(p.socket); !os.IsNotExist(err) {
		t.Errorf("admin socket left behind after clean stop: %v", err)
	}
	p = startServer(t, data)
	var after []jsonEntry
	p.adminJSON(&after, "entry", "list")
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Fatalf("entries changed across restart:\nbefore %+v\nafter  %+v", before, after)
	}
	b2, err := spiffebundle.Parse(td, []byte(p.admin("bundle", "show", "--format", "spiffe")))
	if err != nil {
		t.Fatal(err)
	}
	if !b2.X509Bundle().Equal(b.X509Bundle()) || !b2.JWTBundle().Equal(b.JWTBundle()) {
		t.Fatal("CA changed across restart")
	}
}

// writeEntries writes n distinct entries in the import file format.
func writeEntries(t *testing.T, path string, n int, extra ...map[string]any) {
	writeEntriesTB(t, path, n, extra...)
}

func writeEntriesTB(t testing.TB, path string, n int, extra ...map[string]any) {
	t.Helper()
	var entries []map[string]any
	for i := range n {
		entries = append(entries, map[string]any{
			"spiffe_id": fmt.Sprintf("spiffe://example.org/batch/w%d", i),
			"parent_id": fmt.Sprintf("spiffe://example.org/writ/agent/n%d", i%100),
			"selectors": []string{fmt.Sprintf("unix:uid:%d", 10000+i)},
		})
	}
	entries = append(entries, extra...)
	data, err := json.Marshal(entries)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestIntegrationBatchImport(t *testing.T) {
	dir := shortTempDir(t)
	p := startServer(t, filepath.Join(dir, "data"))
	file := filepath.Join(dir, "entries.json")
	const n = 10000
	writeEntries(t, file, n)
	start := time.Now()
	out := p.admin("entry", "create", "--file", file)
	t.Logf("imported %d entries in %s (%.0f entries/s, CLI and server together)", n, time.Since(start), n/time.Since(start).Seconds())
	if !strings.Contains(out, fmt.Sprintf("created %d of %d", n, n)) {
		t.Fatalf("import summary: %q", out)
	}
	var all []jsonEntry
	p.adminJSON(&all, "entry", "list")
	if len(all) != n {
		t.Fatalf("listed %d entries, want %d", len(all), n)
	}

	// A file with a duplicate and an invalid entry: per-entry results,
	// non-zero exit, the good entry created.
	writeEntries(t, file, 0,
		map[string]any{"spiffe_id": "spiffe://example.org/batch/w1", "parent_id": "spiffe://example.org/writ/agent/n1", "selectors": []string{"unix:uid:10001"}},
		map[string]any{"spiffe_id": "spiffe://example.org/new", "parent_id": "spiffe://example.org/writ/agent/n1", "selectors": []string{"unix:uid:1"}},
		map[string]any{"spiffe_id": "spiffe://other.org/x", "parent_id": "spiffe://other.org/host/n1", "selectors": []string{"unix:uid:2"}},
	)
	out, errOut, code := runWrit(t, nil, "entry", "create", "--file", file, "--admin-socket", p.socket)
	if code == 0 {
		t.Fatalf("import with failures exited 0: %s", out)
	}
	text := out + errOut
	if !strings.Contains(text, "created 1 of 3") || !strings.Contains(strings.ToLower(text), "already exists") || !strings.Contains(text, "not in trust domain") {
		t.Fatalf("import results do not report each entry:\n%s", text)
	}

	// A malformed entry anywhere in the file: nothing is sent.
	writeEntries(t, file, 0,
		map[string]any{"spiffe_id": "spiffe://example.org/fine", "parent_id": "spiffe://example.org/writ/agent/n1", "selectors": []string{"unix:uid:3"}},
		map[string]any{"spiffe_id": "spiffe://example.org/bad", "parent_id": "spiffe://example.org/writ/agent/n1", "selectors": []string{"unix:nope:3"}},
	)
	if out, errOut, code := runWrit(t, nil, "entry", "create", "--file", file, "--admin-socket", p.socket); code == 0 || !strings.Contains(errOut, "unknown unix key") {
		t.Fatalf("malformed import: exit %d\n%s%s", code, out, errOut)
	}
	var fine []jsonEntry
	p.adminJSON(&fine, "entry", "list", "--spiffe-id", "spiffe://example.org/fine")
	if len(fine) != 0 {
		t.Fatal("an import with a malformed entry sent entries")
	}
}

// TestIntegrationCrashDurability kills the server with SIGKILL while
// entries are being created and checks that every acknowledged entry is
// there after a restart.
func TestIntegrationCrashDurability(t *testing.T) {
	data := filepath.Join(shortTempDir(t), "data")
	p := startServer(t, data)
	var (
		mu    sync.Mutex // guards acked
		acked []string
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				out, _, code := runWrit(t, nil, "entry", "create", "--admin-socket", p.socket,
					"--spiffe-id", fmt.Sprintf("spiffe://example.org/crash/%d/%d", w, i), "--parent-id", "spiffe://example.org/writ/agent/a", "--selector", "unix:uid:1")
				if code != 0 {
					return // the server is gone
				}
				mu.Lock()
				acked = append(acked, strings.TrimSpace(out))
				mu.Unlock()
			}
		}()
	}
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 40 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.kill()
	close(stop)
	wg.Wait()

	p = startServer(t, data)
	var all []jsonEntry
	p.adminJSON(&all, "entry", "list")
	have := map[string]bool{}
	for _, e := range all {
		have[e.ID] = true
	}
	for _, id := range acked {
		if !have[id] {
			t.Errorf("acknowledged entry %s lost in the crash", id)
		}
	}
	t.Logf("%d acknowledged entries, %d present after SIGKILL and restart", len(acked), len(all))
}

func TestIntegrationBadInput(t *testing.T) {
	p := startServer(t, filepath.Join(shortTempDir(t), "data"))
	base := []string{"--parent-id", "spiffe://example.org/writ/agent/a", "--selector", "unix:uid:1000"}
	p.admin(append([]string{"entry", "create", "--spiffe-id", "spiffe://example.org/dup"}, base...)...)
	for _, tc := range []struct {
		name string
		args []string
		msg  string // part of the message, lowercase
	}{
		{"dot segments", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/a/../b", "--parent-id", "spiffe://example.org/writ/agent/a", "--selector", "unix:uid:1"}, "spiffe"},
		{"uppercase trust domain", []string{"entry", "create", "--spiffe-id", "spiffe://Example.org/a", "--parent-id", "spiffe://example.org/writ/agent/a", "--selector", "unix:uid:1"}, "spiffe"},
		{"trailing slash", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/a/", "--parent-id", "spiffe://example.org/writ/agent/a", "--selector", "unix:uid:1"}, "spiffe"},
		{"percent encoding", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/%61", "--parent-id", "spiffe://example.org/writ/agent/a", "--selector", "unix:uid:1"}, "spiffe"},
		{"other trust domain", []string{"entry", "create", "--spiffe-id", "spiffe://other.org/a", "--parent-id", "spiffe://example.org/writ/agent/a", "--selector", "unix:uid:1"}, "trust domain"},
		{"parent other trust domain", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/a", "--parent-id", "spiffe://other.org/host/a", "--selector", "unix:uid:1"}, "trust domain"},
		{"selector without value", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/a", "--parent-id", "spiffe://example.org/writ/agent/a", "--selector", "unix"}, "type:value"},
		{"unknown unix key", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/a", "--parent-id", "spiffe://example.org/writ/agent/a", "--selector", "unix:foo:1"}, "unknown unix key"},
		{"negative ttl", append([]string{"entry", "create", "--spiffe-id", "spiffe://example.org/a", "--x509-ttl", "-1h"}, base...), "ttl"},
		{"absurd ttl", append([]string{"entry", "create", "--spiffe-id", "spiffe://example.org/a", "--jwt-ttl", "100000h"}, base...), "ttl"},
		{"invalid dns name", append([]string{"entry", "create", "--spiffe-id", "spiffe://example.org/a", "--dns-name", "bad_name.example.org"}, base...), "dns name"},
		{"duplicate entry", append([]string{"entry", "create", "--spiffe-id", "spiffe://example.org/dup"}, base...), "already exists"},
		{"oversized selector", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/a", "--parent-id", "spiffe://example.org/writ/agent/a", "--selector", "k8s:" + strings.Repeat("x", 2000)}, "longer than"},
		{"unknown entry", []string{"entry", "show", "--id", "00000000-0000-4000-8000-000000000000"}, "not found"},
		{"malformed entry id", []string{"entry", "delete", "--id", "../../etc"}, "entry id"},
		{"entry with an agent's ID", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/writ/agent/b", "--parent-id", "spiffe://example.org/writ/agent/a", "--selector", "unix:uid:1"}, "reserved"},
		{"token for a workload ID", []string{"token", "generate", "--spiffe-id", "spiffe://example.org/web"}, "not an agent id"},
		{"token outside trust domain", []string{"token", "generate", "--spiffe-id", "spiffe://other.org/writ/agent/x"}, "trust domain"},
		{"token bad ttl", []string{"token", "generate", "--spiffe-id", "spiffe://example.org/writ/agent/x", "--ttl", "-5m"}, "ttl"},
		{"control characters", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/a\x1b[31m", "--parent-id", "spiffe://example.org/writ/agent/a", "--selector", "unix:uid:1"}, "spiffe"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runWrit(t, nil, append(tc.args, "--admin-socket", p.socket)...)
			if code == 0 {
				t.Fatalf("exit 0, stdout %q", out)
			}
			if !strings.Contains(strings.ToLower(errOut), tc.msg) {
				t.Errorf("message %q does not mention %q", errOut, tc.msg)
			}
			if strings.ContainsAny(errOut, "\x1b") {
				t.Errorf("message carries a raw escape character: %q", errOut)
			}
		})
	}
	var all []jsonEntry
	p.adminJSON(&all, "entry", "list")
	if len(all) != 1 {
		t.Fatalf("bad input created entries: %+v", all)
	}
}

// TestIntegrationRefusesBadState checks that the server refuses, with a
// clear message, a data directory it must not use, and never replaces
// existing state with a new CA.
func TestIntegrationRefusesBadState(t *testing.T) {
	data := filepath.Join(shortTempDir(t), "data")
	p := startServer(t, data)
	bundle := p.admin("bundle", "show")

	// A second server on the same data dir fails fast.
	start := time.Now()
	second := launchServer(t, data)
	if err := second.wait(10 * time.Second); err == nil {
		t.Fatal("second server on the same data dir exited 0")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("second server took %s to fail", d)
	}
	if !strings.Contains(second.log.String(), "locked by another writ process") {
		t.Errorf("second server's message: %s", second.log)
	}
	p.stop()

	refuse := func(name, wantMsg string, breakIt, fixIt func()) {
		t.Run(name, func(t *testing.T) {
			breakIt()
			q := launchServer(t, data)
			if err := q.wait(15 * time.Second); err == nil {
				t.Fatalf("server started on %s", name)
			}
			if !strings.Contains(q.log.String(), wantMsg) {
				t.Errorf("message does not say %q:\n%s", wantMsg, q.log)
			}
			fixIt()
		})
	}
	refuse("loose data dir", "chmod 700", func() { os.Chmod(data, 0o755) }, func() { os.Chmod(data, 0o700) })
	db := filepath.Join(data, "datastore.db")
	refuse("loose datastore file", "chmod 600", func() { os.Chmod(db, 0o644) }, func() { os.Chmod(db, 0o600) })

	keys, _ := filepath.Glob(filepath.Join(data, "keys", "*.pem"))
	saved := map[string][]byte{}
	for _, k := range keys {
		saved[k], _ = os.ReadFile(k)
	}
	restoreKeys := func() {
		for k, v := range saved {
			os.WriteFile(k, v, 0o600)
		}
	}
	refuse("missing key file", "missing", func() { os.Remove(keys[0]) }, restoreKeys)
	refuse("corrupt key file", "corrupt", func() { os.WriteFile(keys[0], []byte("garbage"), 0o600) }, restoreKeys)

	dbData, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	restoreDB := func() { os.WriteFile(db, dbData, 0o600) }
	refuse("corrupt datastore", "corrupt", func() { os.WriteFile(db, bytes.Repeat([]byte("x"), 64<<10), 0o600) }, restoreDB)
	refuse("missing datastore", "missing", func() { os.Remove(db) }, restoreDB)

	// Restored, the server comes back with the same CA.
	p = startServer(t, data)
	if got := p.admin("bundle", "show"); got != bundle {
		t.Fatal("CA changed after refused starts")
	}
}

// TestIntegrationAdminSocketUID calls the admin API as another uid through
// a socket whose file mode lets it connect: the server must refuse it by
// its peer credentials, and accept it once listed with --admin-uid.
func TestIntegrationAdminSocketUID(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("this test needs root (to run a command as another uid) and CI runs as root")
		}
		t.Skip("needs root to run a command as another uid")
	}
	uid, gid := testUser(t)
	dir := shortTempDir(t)
	sockDir := filepath.Join(dir, "s")
	os.Mkdir(sockDir, 0o755)
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(writBin), 0o755)
	socket := filepath.Join(sockDir, "admin.sock")

	asOther := func(args ...string) (string, int) {
		cmd := exec.Command(writBin, append(args, "--admin-socket", socket)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
		cmd.Env = cleanEnv()
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}

	p := startServer(t, filepath.Join(dir, "data"), "--admin-socket", socket)
	if fi, err := os.Stat(socket); err != nil || fi.Mode().Perm()&0o006 == 0 {
		t.Fatalf("socket should be reachable by other users for this test: %v %v", fi.Mode(), err)
	}
	out, code := asOther("entry", "list")
	if code == 0 || !strings.Contains(strings.ToLower(out), "permission") {
		t.Fatalf("uid %d was not refused: exit %d %q", uid, code, out)
	}
	out, code = asOther("token", "generate", "--spiffe-id", "spiffe://example.org/writ/agent/x")
	if code == 0 {
		t.Fatalf("uid %d generated a token: %q", uid, out)
	}
	// Health is public.
	if out, code := asOther("server", "healthcheck"); code != 0 {
		t.Fatalf("healthcheck as uid %d: %d %q", uid, code, out)
	}
	if !strings.Contains(p.log.String(), "uid="+strconv.Itoa(int(uid))) {
		t.Errorf("refusal not logged with the caller's uid:\n%s", p.log)
	}
	p.stop()

	startServer(t, filepath.Join(dir, "data"), "--admin-socket", socket, "--admin-uid", strconv.Itoa(int(uid)))
	if out, code := asOther("entry", "list"); code != 0 {
		t.Fatalf("uid %d listed with --admin-uid: exit %d %q", uid, code, out)
	}
	// A backup holds CA private keys: an --admin-uid may not take one.
	if out, code := asOther("server", "backup", "--file", "-"); code == 0 || !strings.Contains(out, "only root and the server's uid") {
		t.Fatalf("backup as --admin-uid %d: exit %d %q", uid, code, out)
	}
}

func testUser(t *testing.T) (uint32, uint32) { return testuser.Lookup(t) }
