package integration_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"writ.dev/writ/internal/testuser"
)

// fetchAs runs `writ svid fetch --output json` as uid/gid against the
// agent's socket and returns the SPIFFE IDs and hints it was given (none
// when the call fails, as it does for a caller with no identity).
func fetchAs(t *testing.T, p *agentProc, uid, gid uint32) (ids, hints []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, writBin, "svid", "fetch", "--output", "json", "--socket-path", p.socket, "--timeout", "5s")
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	out, err := cmd.Output()
	if err != nil {
		return nil, nil
	}
	var svids []struct {
		SPIFFEID string `json:"spiffe_id"`
		Hint     string `json:"hint"`
	}
	if err := json.Unmarshal(out, &svids); err != nil {
		t.Fatalf("svid fetch as uid %d: %v: %s", uid, err, out)
	}
	for _, s := range svids {
		ids = append(ids, s.SPIFFEID)
		hints = append(hints, s.Hint)
	}
	return ids, hints
}

// jwtSubjectAs runs `writ jwt fetch` as uid/gid and returns the
// token's subject ("" if it fails).
func jwtSubjectAs(t *testing.T, p *agentProc, uid, gid uint32) string {
	t.Helper()
	cmd := exec.Command(writBin, "jwt", "fetch", "--audience", "api", "--socket-path", p.socket)
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	out, err := cmd.Output()
	if err != nil {
		t.Logf("jwt fetch as uid %d: %v", uid, err)
		return ""
	}
	parts := strings.Split(strings.TrimSpace(string(out)), ".")
	if len(parts) != 3 {
		t.Fatalf("jwt fetch printed %q", out)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims struct {
		Sub string `json:"sub"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	return claims.Sub
}

// waitFetchAs polls fetchAs until it gives want.
func waitFetchAs(t *testing.T, p *agentProc, uid, gid uint32, want []string) []string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var got, hints []string
	for time.Now().Before(deadline) {
		got, hints = fetchAs(t, p, uid, gid)
		if slices.Equal(got, want) {
			return hints
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("uid %d gets %v, want %v", uid, got, want)
	return nil
}

// TestIntegrationTemplates: one template entry gives three users of one
// group their own IDs through a real agent, nobody else; a user whose
// name is no valid segment gets none (logged); the IDs show in entry
// show and svid fetch names the template; a change reaches the
// workloads at once and deleting the entry removes their SVIDs.
func TestIntegrationTemplates(t *testing.T) {
	testuser.RequireRoot(t)
	e := newNodeEnv(t)
	const agentID = "spiffe://example.org/writ/agent/a"
	a := startAgent(t, e.addr, filepath.Join(e.dir, "a"), e.bundle, e.token(agentID))
	// Other users reach the binary and the socket.
	for _, d := range []string{filepath.Dir(writBin), e.dir} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	const group = "writ-tmpl"
	gid := testuser.Group(t, group)
	type member struct {
		name     string
		uid, gid uint32
	}
	var members []member
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("writ-tmpl-%d", i)
		uid, g, ok := testuser.User(t, name, group)
		if !ok {
			t.Fatalf("cannot create user %s", name)
		}
		members = append(members, member{name, uid, g})
	}
	outUID, outGID, ok := testuser.User(t, "writ-tmpl-out", "")
	if !ok || outGID == gid {
		t.Fatal("cannot create a user outside the group")
	}

	// The README's command, with this test's agent and group.
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const readmeCmd = "./writ entry create --template --spiffe-id 'spiffe://example.org/user/{{unix.user}}' --parent-id spiffe://example.org/writ/agent/node1 --selector unix:gid:1000"
	if !strings.Contains(strings.Join(strings.Fields(strings.ReplaceAll(string(readme), "\\\n", " ")), " "), readmeCmd) {
		t.Fatalf("README.md does not hold %q", readmeCmd)
	}
	id := strings.TrimSpace(e.server.admin("entry", "create", "--template",
		"--spiffe-id", "spiffe://example.org/user/{{unix.user}}",
		"--parent-id", agentID, "--selector", fmt.Sprintf("unix:gid:%d", gid)))
	for _, m := range members {
		hints := waitFetchAs(t, a, m.uid, m.gid, []string{"spiffe://example.org/user/" + m.name})
		if want := "writ-template:" + id; !slices.Equal(hints, []string{want}) {
			t.Errorf("%s: hints %v, want %s", m.name, hints, want)
		}
	}
	// JWT-SVIDs: the same ID.
	if sub := jwtSubjectAs(t, a, members[1].uid, members[1].gid); sub != "spiffe://example.org/user/"+members[1].name {
		t.Errorf("JWT-SVID subject %q", sub)
	}
	if got, _ := fetchAs(t, a, outUID, outGID); len(got) != 0 {
		t.Errorf("user outside the group got %v", got)
	}
	// A name useradd may take but that is no SPIFFE ID segment.
	if uid, g, ok := testuser.User(t, "writtmpl$", group); ok {
		if got, _ := fetchAs(t, a, uid, g); len(got) != 0 {
			t.Errorf("user writtmpl$ got %v", got)
		}
		if !strings.Contains(a.log.String(), "template gives the caller no identity") {
			t.Error("no log line for the caller whose name is no valid segment")
		}
		if strings.Contains(a.log.String(), "writtmpl$") {
			t.Error("the agent logged the user name")
		}
	} else {
		t.Log("useradd refuses the name writtmpl$: not checked")
	}
	// A gid with no group name: {{unix.group}} has nothing to fill.
	groupless := strings.TrimSpace(e.server.admin("entry", "create", "--template",
		"--spiffe-id", "spiffe://example.org/group/{{unix.group}}",
		"--parent-id", agentID, "--selector", fmt.Sprintf("unix:uid:%d", members[0].uid)))
	const nameless = 64999
	if got, _ := fetchAs(t, a, members[0].uid, nameless); slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, "spiffe://example.org/group/") }) {
		t.Errorf("a gid without a group name got %v", got)
	}
	e.server.admin("entry", "delete", "--id", groupless)

	// entry show lists what the agent issues.
	waitFor(t, 20*time.Second, func() bool {
		out := e.server.admin("entry", "show", "--id", id)
		for _, m := range members {
			if !strings.Contains(out, "spiffe://example.org/user/"+m.name) {
				return false
			}
		}
		return strings.Contains(out, agentID)
	})
	// One entry stored for all of them.
	var entries []jsonEntry
	e.server.adminJSON(&entries, "entry", "list")
	if len(entries) != 1 {
		t.Fatalf("%d entries stored, want the one template", len(entries))
	}

	// A change reaches a connected workload as soon as it is pushed: a
	// stream held open by this process as member 0 would need its uid,
	// so poll fetches as that user and time the first new answer.
	start := time.Now()
	e.server.admin("entry", "update", "--id", id, "--template", "--spiffe-id", "spiffe://example.org/uid/{{unix.uid}}")
	waitFetchAs(t, a, members[0].uid, members[0].gid, []string{fmt.Sprintf("spiffe://example.org/uid/%d", members[0].uid)})
	t.Logf("template change served after %s (including the update command and one fetch process)", time.Since(start).Round(time.Millisecond))

	e.server.admin("entry", "delete", "--id", id)
	for _, m := range members {
		waitFetchAs(t, a, m.uid, m.gid, nil)
	}
}
