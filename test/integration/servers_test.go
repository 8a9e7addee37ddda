package integration_test

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// jsonServer is a server as `writ server list --output json` prints it.
type jsonServer struct {
	ID        string `json:"id"`
	Address   string `json:"address"`
	Version   string `json:"version"`
	StartedAt string `json:"started_at"`
	Heartbeat string `json:"heartbeat"`
}

// TestIntegrationServerList checks that a real server records itself in
// its datastore and that `writ server list` shows it, across a restart.
// (Several servers on one datastore need a shared database datastore.)
func TestIntegrationServerList(t *testing.T) {
	data := filepath.Join(shortTempDir(t), "data")
	before := time.Now().Add(-time.Second).Truncate(time.Second)
	p := startServer(t, data)
	raw, err := os.ReadFile(filepath.Join(data, "server-id"))
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(string(raw))

	var servers []jsonServer
	p.adminJSON(&servers, "server", "list")
	if len(servers) != 1 {
		t.Fatalf("server list = %+v, want this server", servers)
	}
	s := servers[0]
	if s.ID != id || s.Address != p.nodeAddress() || s.Version == "" {
		t.Errorf("server list = %+v, want ID %s, address %s and a version", s, id, p.nodeAddress())
	}
	started, err := time.Parse(time.RFC3339, s.StartedAt)
	if err != nil || started.Before(before) {
		t.Errorf("started_at %q (%v), want RFC 3339 at or after %s", s.StartedAt, err, before)
	}
	if hb, err := time.Parse(time.RFC3339, s.Heartbeat); err != nil || hb.Before(started) {
		t.Errorf("heartbeat %q (%v), want RFC 3339 at or after started_at", s.Heartbeat, err)
	}
	text := p.admin("server", "list")
	if lines := strings.Split(strings.TrimSpace(text), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[0], "ID") || !strings.Contains(lines[1], id) {
		t.Errorf("text output:\n%s", text)
	}

	// A restart keeps the ID and replaces the record.
	p.stop()
	p = startServer(t, data)
	var again []jsonServer
	p.adminJSON(&again, "server", "list")
	if len(again) != 1 || again[0].ID != id || again[0].Address != p.nodeAddress() || again[0].StartedAt < s.StartedAt {
		t.Errorf("after a restart: %+v, want one record of %s, started at or after %s", again, id, s.StartedAt)
	}
}

// TestIntegrationDatastoreFlag checks that a datastore this build cannot
// open is refused at start with a clear message and without the URL's
// password.
func TestIntegrationDatastoreFlag(t *testing.T) {
	data := filepath.Join(shortTempDir(t), "data")
	for _, tc := range []struct {
		url  string
		code int
		want string
	}{
		{"postgres://writ:url-secret@127.0.0.1:1/writ?connect_timeout=2", 1, "open datastore postgres://writ:"},
		{"mysql://writ:url-secret@127.0.0.1:1/writ", 2, `unknown scheme "mysql"`},
	} {
		_, errOut, code := runWrit(t, nil, "server", "run", "--trust-domain", "example.org", "--data-dir", data,
			"--bind-address", "127.0.0.1:0", "--datastore", tc.url)
		if code != tc.code || !strings.Contains(errOut, tc.want) || strings.Contains(errOut, "url-secret") {
			t.Errorf("--datastore %s: exit %d, stderr %q; want exit %d and %q without the password", tc.url, code, errOut, tc.code, tc.want)
		}
	}
}

// TestIntegrationAgentSkipsUnreachableServer runs a real agent given two
// server addresses, the first of which nothing listens on: it attests
// with, and stays connected to, the one that answers.
func TestIntegrationAgentSkipsUnreachableServer(t *testing.T) {
	e := newNodeEnv(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := lis.Addr().String()
	lis.Close()
	a := startAgent(t, dead+","+e.addr, filepath.Join(e.dir, "a"), e.bundle, e.token("spiffe://example.org/writ/agent/a"))
	if got := e.agentIDs(); len(got) != 1 || got[0] != "spiffe://example.org/writ/agent/a" {
		t.Fatalf("agent list: %v", got)
	}
	deadline := time.Now().Add(30 * time.Second)
	for logValue(a.log.String(), "connected to the server", "server_address") != e.addr {
		if time.Now().After(deadline) {
			t.Fatalf("agent log shows no connection to %s:\n%s", e.addr, tail(a.log.String(), 30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
