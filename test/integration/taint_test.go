package integration_test

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// authorities returns the IDs of a kind's authorities by state.
func (e *nodeEnv) authoritiesByState(kind string) map[string][]string {
	var list []jsonAuthority
	e.server.adminJSON(&list, "ca", kind, "show")
	out := make(map[string][]string)
	for _, a := range list {
		out[a.State] = append(out[a.State], a.ID)
	}
	return out
}

// jwtKid returns the kid of a compact JWS.
func jwtKid(t *testing.T, tok string) string {
	t.Helper()
	head, _, _ := strings.Cut(tok, ".")
	raw, err := base64.RawURLEncoding.DecodeString(head)
	if err != nil {
		t.Fatal(err)
	}
	var h struct {
		Kid string `json:"kid"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatal(err)
	}
	return h.Kid
}

// fetchSVID fetches this process's X.509-SVID from an agent.
func fetchSVID(t *testing.T, p *agentProc) *x509svid.SVID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := workloadapi.FetchX509SVID(ctx, socketAddr(p))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestIntegrationTaintResignsWorkloadSVIDs: after a rotation, tainting
// the old X.509 CA makes the agent re-sign at once the workload SVIDs it
// signed (not at half-life) and renew its own; tainting the old JWT key
// drops the cached JWT-SVID; after revocation the old key is out of the
// workload's bundle and what it signed no longer verifies.
func TestIntegrationTaintResignsWorkloadSVIDs(t *testing.T) {
	e := newNodeEnv(t)
	a := startAgent(t, e.addr, filepath.Join(e.dir, "a"), e.bundle, e.token("spiffe://example.org/writ/agent/a"))
	e.entry("spiffe://example.org/web", "spiffe://example.org/writ/agent/a")
	waitSVIDs(t, a, []string{"spiffe://example.org/web"})

	oldX509 := e.authoritiesByState("x509")["active"]
	oldJWT := e.authoritiesByState("jwt")["active"]
	if len(oldX509) != 1 || len(oldJWT) != 1 {
		t.Fatalf("active authorities: %v %v", oldX509, oldJWT)
	}
	first := fetchSVID(t, a)
	if got := hex.EncodeToString(first.Certificates[0].AuthorityKeyId); got != oldX509[0] {
		t.Fatalf("SVID signed by %s, want %s", got, oldX509[0])
	}
	tok1, errOut, code := runWrit(t, nil, "jwt", "fetch", "--audience", "api", "--socket-path", a.socket)
	tok1 = strings.TrimSpace(tok1)
	if code != 0 || jwtKid(t, tok1) != oldJWT[0] {
		t.Fatalf("jwt fetch: exit %d %s", code, errOut)
	}

	e.server.admin("ca", "rotate", "--wait")
	newX509 := e.authoritiesByState("x509")["active"][0]
	newJWT := e.authoritiesByState("jwt")["active"][0]
	// The rotation alone re-signs nothing before half-life.
	if s := fetchSVID(t, a); !s.Certificates[0].Equal(first.Certificates[0]) {
		t.Fatal("workload SVID re-signed by the rotation alone")
	}

	e.server.admin("ca", "x509", "taint", "--id", oldX509[0])
	start := time.Now()
	deadline := start.Add(10 * time.Second)
	for {
		s := fetchSVID(t, a)
		if hex.EncodeToString(s.Certificates[0].AuthorityKeyId) == newX509 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("workload SVID not re-signed by %s within 10s of the taint", newX509)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("taint -> workload SVID re-signed: %s", time.Since(start))
	waitLog(t, a.log, "agent SVID renewed", 10*time.Second)

	e.server.admin("ca", "jwt", "taint", "--id", oldJWT[0])
	deadline = time.Now().Add(10 * time.Second)
	for {
		tok, errOut, code := runWrit(t, nil, "jwt", "fetch", "--audience", "api", "--socket-path", a.socket)
		if code != 0 {
			t.Fatalf("jwt fetch after taint: %s", errOut)
		}
		if kid := jwtKid(t, strings.TrimSpace(tok)); kid == newJWT {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("JWT-SVID of the tainted key %s still served", oldJWT[0])
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Revoked: out of the workload's bundle; what it signed fails.
	e.server.admin("ca", "x509", "revoke", "--id", oldX509[0], "--force")
	e.server.admin("ca", "jwt", "revoke", "--id", oldJWT[0], "--force")
	td := spiffeid.RequireTrustDomainFromString("example.org")
	deadline = time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		bundles, err := workloadapi.FetchX509Bundles(ctx, socketAddr(a))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		b, err := bundles.GetX509BundleForTrustDomain(td)
		if err != nil {
			t.Fatal(err)
		}
		if len(b.X509Authorities()) == 1 {
			if _, _, err := x509svid.Verify(first.Certificates, bundles); err == nil {
				t.Fatal("an SVID of the revoked CA still verifies against the workload's bundle")
			}
			if _, _, err := x509svid.Verify(fetchSVID(t, a).Certificates, bundles); err != nil {
				t.Fatalf("current SVID: %v", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("workload bundle still holds %d X.509 authorities", len(b.X509Authorities()))
		}
		time.Sleep(10 * time.Millisecond)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		_, _, code := runWrit(t, nil, "jwt", "validate", "--audience", "api", "--token", tok1, "--socket-path", a.socket)
		if code != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("writ jwt validate still accepts a token of the revoked key")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitLog waits until buf holds sub.
func waitLog(t *testing.T, buf *syncBuffer, sub string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(buf.String(), sub) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log within %s:\n%s", sub, timeout, tail(buf.String(), 30))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestIntegrationRotateWaitsForAcknowledgements: rotate --wait activates
// only once every connected agent acknowledged the new bundle; with an
// agent that cannot (stopped), it times out naming how many have not,
// and the keys stay prepared until a second rotate.
func TestIntegrationRotateWaitsForAcknowledgements(t *testing.T) {
	e := newNodeEnv(t)
	startAgent(t, e.addr, filepath.Join(e.dir, "a"), e.bundle, e.token("spiffe://example.org/writ/agent/a"))
	b := startAgent(t, e.addr, filepath.Join(e.dir, "b"), e.bundle, e.token("spiffe://example.org/writ/agent/b"))

	if err := b.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			b.cmd.Process.Signal(syscall.SIGCONT)
		}
	}()
	before := e.authoritiesByState("x509")["active"]
	_, errOut, code := runWrit(t, nil, "ca", "rotate", "--wait", "--wait-timeout", "1s", "--admin-socket", e.server.socket)
	if code == 0 || !strings.Contains(errOut, "1 of 2 agents connected to this server have not acknowledged") || !strings.Contains(errOut, "not activated") {
		t.Fatalf("rotate --wait with a stopped agent: exit %d: %s", code, errOut)
	}
	states := e.authoritiesByState("x509")
	if !slices.Equal(states["active"], before) || len(states["prepared"]) != 1 {
		t.Fatalf("after the timeout: %v, want %v still active and one prepared", states, before)
	}

	if err := b.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false
	out, errOut, code := runWrit(t, nil, "ca", "rotate", "--wait", "--admin-socket", e.server.socket)
	if code != 0 || !strings.Contains(out, "acknowledged by every agent connected to this server (2)") {
		t.Fatalf("rotate --wait: exit %d\n%s%s", code, out, errOut)
	}
	if got := e.authoritiesByState("x509")["active"]; len(got) != 1 || got[0] != states["prepared"][0] {
		t.Fatalf("active after the second rotate: %v, want the prepared %v", got, states["prepared"])
	}
}
