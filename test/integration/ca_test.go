package integration_test

import (
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// jsonAuthority is a CA key as `writ ca ... show --output json` prints it.
type jsonAuthority struct {
	Kind      string `json:"kind"`
	ID        string `json:"id"`
	State     string `json:"state"`
	NotBefore string `json:"not_before"`
	NotAfter  string `json:"not_after"`
	ServerID  string `json:"server_id"`
}

func (e *nodeEnv) x509Authorities() map[string]jsonAuthority {
	var list []jsonAuthority
	e.server.adminJSON(&list, "ca", "x509", "show")
	out := make(map[string]jsonAuthority)
	for _, a := range list {
		for _, ts := range []string{a.NotBefore, a.NotAfter} {
			if _, err := time.Parse(time.RFC3339, ts); err != nil {
				e.t.Errorf("authority %s: time %q: %v", a.ID, ts, err)
			}
		}
		if a.Kind != "x509" || a.ServerID == "" {
			e.t.Errorf("authority %+v", a)
		}
		out[a.ID] = a
	}
	return out
}

// bundleSKIDs returns the subject key IDs of the CAs `writ bundle show`
// prints.
func (e *nodeEnv) bundleSKIDs() map[string]bool {
	rest := []byte(e.server.admin("bundle", "show"))
	ids := make(map[string]bool)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return ids
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			e.t.Fatal(err)
		}
		ids[hex.EncodeToString(c.SubjectKeyId)] = true
	}
}

// TestIntegrationCARotateTaintRevoke: rotate the CA with an agent
// connected, then taint and revoke the old CA.
func TestIntegrationCARotateTaintRevoke(t *testing.T) {
	e := newNodeEnv(t)
	startAgent(t, e.addr, filepath.Join(e.dir, "a"), e.bundle, e.token("spiffe://example.org/writ/agent/a"))

	before := e.x509Authorities()
	if len(before) != 1 {
		t.Fatalf("authorities at start: %v", before)
	}
	var old string
	for id, a := range before {
		old = id
		if a.State != "active" {
			t.Fatalf("first CA is %s", a.State)
		}
	}

	out, errOut, code := runWrit(t, nil, "ca", "rotate", "--wait", "--admin-socket", e.server.socket)
	if code != 0 || !strings.Contains(out, "new bundle acknowledged by every agent connected to this server (1)") {
		t.Fatalf("rotate --wait: exit %d\n%s%s", code, out, errOut)
	}
	after := e.x509Authorities()
	if len(after) != 2 || after[old].State != "old" {
		t.Fatalf("after rotation: %+v", after)
	}
	var current string
	for id, a := range after {
		if id != old {
			current = id
			if a.State != "active" {
				t.Fatalf("new CA is %s", a.State)
			}
		}
	}
	if skids := e.bundleSKIDs(); !skids[old] || !skids[current] {
		t.Fatalf("bundle after rotation holds %v, want %s and %s", skids, old, current)
	}

	// The active CA cannot be tainted; the old one can.
	if _, errOut, code := runWrit(t, nil, "ca", "x509", "taint", "--id", current, "--admin-socket", e.server.socket); code == 0 || !strings.Contains(errOut, "rotate first") {
		t.Fatalf("taint of the active CA: exit %d: %s", code, errOut)
	}
	e.server.admin("ca", "x509", "taint", "--id", old)
	if got := e.x509Authorities()[old].State; got != "tainted" {
		t.Fatalf("tainted CA shows as %s", got)
	}
	// X.509-SVIDs it signed may be valid for another hour: refused
	// without --force.
	if _, errOut, code := runWrit(t, nil, "ca", "x509", "revoke", "--id", old, "--admin-socket", e.server.socket); code == 0 || !strings.Contains(errOut, "may be valid until") {
		t.Fatalf("early revoke: exit %d: %s", code, errOut)
	}
	_, errOut, code = runWrit(t, nil, "ca", "x509", "revoke", "--id", old, "--force", "--admin-socket", e.server.socket)
	if code != 0 || !strings.Contains(errOut, "warning") {
		t.Fatalf("revoke --force: exit %d: %s", code, errOut)
	}
	if skids := e.bundleSKIDs(); skids[old] || !skids[current] {
		t.Fatalf("bundle after revocation holds %v; want %s and not %s", skids, current, old)
	}
	if _, ok := e.x509Authorities()[old]; ok {
		t.Fatal("revoked CA still listed")
	}
	if log := e.server.log.String(); !strings.Contains(log, "CA key revoked") || !strings.Contains(log, "key_id="+old) {
		t.Errorf("server log lacks the revocation or its audit record:\n%s", tail(log, 30))
	}
}
