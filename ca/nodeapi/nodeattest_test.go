package nodeapi_test

import (
	"context"
	"crypto"
	"crypto/sha1" //nolint:gosec // the x509pop agent ID is a SHA-1 fingerprint
	"crypto/x509"
	"encoding/hex"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/attest/x509pop"
	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/ca/nodeapi"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/nodepki"
)

// x509popEnv is a node API that trusts one organisation CA for x509pop.
type x509popEnv struct {
	*env
	ca, other *nodepki.CA
	roots     atomic.Pointer[[]*x509.Certificate]
}

func newX509popEnv(t *testing.T) *x509popEnv { return newX509popEnvWith(t, envOptions{}) }

// newX509popEnvWith is newX509popEnv with opts (whose node attestors it
// sets).
func newX509popEnvWith(t *testing.T, opts envOptions) *x509popEnv {
	now := testStart()
	x := &x509popEnv{ca: nodepki.NewCA(t, "org CA", now), other: nodepki.NewCA(t, "other CA", now)}
	roots := []*x509.Certificate{x.ca.Cert}
	x.roots.Store(&roots)
	opts.nodeAttestors = func(clk clock.Clock) []nodeapi.NodeAttestor {
		v, err := x509pop.NewVerifier(x509pop.Config{TrustDomain: td, Roots: func() []*x509.Certificate { return *x.roots.Load() }, Clock: clk})
		if err != nil {
			t.Fatal(err)
		}
		return []nodeapi.NodeAttestor{v}
	}
	x.env = newEnv(t, opts)
	return x
}

// attestNode runs one AttestNode stream with the x509pop agent half of
// cert; answer, if set, replaces the agent's answer to the challenge.
func (e *env) attestNode(cert *nodepki.Cert, answer func(nonce, sig []byte) []byte) (*nodev1.AttestNodeResponse, *agent, error) {
	e.t.Helper()
	return e.attestNodeVia(e.client(nil), cert, answer)
}

// attestNodeVia is attestNode over the client c.
func (e *env) attestNodeVia(c nodev1.NodeServiceClient, cert *nodepki.Cert, answer func(nonce, sig []byte) []byte) (*nodev1.AttestNodeResponse, *agent, error) {
	e.t.Helper()
	return e.attestNodeChain(c, [][]byte{cert.Cert.Raw}, cert.Key, answer)
}

// attestNodeChain is attestNodeVia with the certificate chain (leaf
// first) and key of the x509pop agent half.
func (e *env) attestNodeChain(c nodev1.NodeServiceClient, chain [][]byte, nodeKey crypto.Signer, answer func(nonce, sig []byte) []byte) (*nodev1.AttestNodeResponse, *agent, error) {
	e.t.Helper()
	ag, err := x509pop.NewAgent(chain, nodeKey)
	if err != nil {
		e.t.Fatal(err)
	}
	key := newKey(e.t)
	ctx := ctxT(e.t)
	stream, err := c.AttestNode(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	payload, _ := ag.Payload(ctx)
	if err := stream.Send(&nodev1.AttestNodeRequest{AttestationType: x509pop.Type, Payload: payload, Csr: newCSR(e.t, key)}); err != nil {
		e.t.Fatal(err)
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return nil, nil, err
		}
		if len(resp.Challenge) == 0 {
			a := &agent{key: key}
			a.setSVID(e.t, resp.SvidChain)
			a.id = spiffeid.RequireFromString(a.leaf.URIs[0].String())
			a.client = e.client(a.cert)
			return resp, a, nil
		}
		sig, err := ag.Respond(ctx, resp.Challenge)
		if err != nil {
			e.t.Fatal(err)
		}
		if answer != nil {
			sig = answer(resp.Challenge, sig)
		}
		if err := stream.Send(&nodev1.AttestNodeRequest{ChallengeResponse: sig}); err != nil {
			e.t.Fatal(err)
		}
	}
}

func (e *env) agentCount() int {
	e.t.Helper()
	as, err := e.store.ListAgents(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return len(as)
}

func sha1Hex(der []byte) string {
	s := sha1.Sum(der) //nolint:gosec // see import
	return hex.EncodeToString(s[:])
}

func TestAttestNodeX509pop(t *testing.T) {
	e := newX509popEnv(t)
	node := e.ca.Issue(t, nodepki.Node{CN: "web1", OU: []string{"web"}, DNS: []string{"web1.example.org"}}, testStart())
	resp, a, err := e.attestNode(node, nil)
	if err != nil {
		t.Fatalf("AttestNode: %v", err)
	}
	wantID := "spiffe://example.org/writ/agent/x509pop/" + sha1Hex(node.Cert.Raw)
	if a.id.String() != wantID {
		t.Errorf("agent ID %s, want %s", a.id, wantID)
	}
	wantSel := []string{
		"x509pop:ca:fingerprint:" + sha1Hex(e.ca.Cert.Raw),
		"x509pop:san:dns:web1.example.org",
		"x509pop:serialnumber:" + node.Cert.SerialNumber.Text(16),
		"x509pop:subject:cn:web1",
		"x509pop:subject:ou:web",
	}
	if !slices.Equal(resp.NodeSelectors, wantSel) {
		t.Errorf("node selectors %q, want %q", resp.NodeSelectors, wantSel)
	}
	rec := e.fetchAgent(a.id)
	if rec.AttestationType != x509pop.Type || len(rec.Selectors) != len(wantSel) || rec.SerialNumber != a.serial() {
		t.Errorf("agent record %+v", rec)
	}
	// The Sync stream repeats the node selectors, for the agent.
	s := e.sync(a)
	if m := s.next(); !slices.Equal(m.NodeSelectors, wantSel) {
		t.Errorf("Sync node selectors %q, want %q", m.NodeSelectors, wantSel)
	}
}

// TestAttestNodeX509popRefused: each bad credential is refused with a
// message that says what kind of failure, and no agent is created.
func TestAttestNodeX509popRefused(t *testing.T) {
	e := newX509popEnv(t)
	now := testStart()
	tests := []struct {
		name   string
		cert   func() *nodepki.Cert
		answer func(nonce, sig []byte) []byte
		msg    string
	}{
		{name: "expired", cert: func() *nodepki.Cert {
			return e.ca.Issue(t, nodepki.Node{CN: "old", NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}, now)
		}, msg: "not trusted"},
		{name: "another CA", cert: func() *nodepki.Cert { return e.other.Issue(t, nodepki.Node{CN: "web1"}, now) }, msg: "not trusted"},
		{name: "no digitalSignature", cert: func() *nodepki.Cert {
			return e.ca.Issue(t, nodepki.Node{CN: "enc", KeyUsage: x509.KeyUsageKeyEncipherment}, now)
		}, msg: "not trusted"},
		{name: "server auth only", cert: func() *nodepki.Cert {
			return e.ca.Issue(t, nodepki.Node{CN: "srv", ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, now)
		}, msg: "not trusted"},
		{name: "signature by another key", cert: func() *nodepki.Cert { return e.ca.Issue(t, nodepki.Node{CN: "web1"}, now) }, answer: func(nonce, _ []byte) []byte {
			other := e.ca.Issue(t, nodepki.Node{CN: "web2"}, now)
			ag, _ := x509pop.NewAgent([][]byte{other.Cert.Raw}, other.Key)
			sig, _ := ag.Respond(context.Background(), nonce)
			return sig
		}, msg: "proof of possession failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.agentCount()
			_, _, err := e.attestNode(tt.cert(), tt.answer)
			wantCode(t, err, codes.PermissionDenied, "")
			if !strings.Contains(err.Error(), "no identity issued") || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not say %q", err, tt.msg)
			}
			if n := e.agentCount(); n != before {
				t.Errorf("%d agents after a refused attestation, want %d", n, before)
			}
		})
	}
	if len(e.logs.find("attestation refused")) < len(tests) {
		t.Errorf("refusals not logged: %v", e.logs.all())
	}
}

// TestAttestNodeReplay: an answer recorded from one attestation does not
// answer another's challenge.
func TestAttestNodeReplay(t *testing.T) {
	e := newX509popEnv(t)
	node := e.ca.Issue(t, nodepki.Node{CN: "web1"}, testStart())
	var recorded []byte
	if _, _, err := e.attestNode(node, func(_, sig []byte) []byte { recorded = sig; return sig }); err != nil {
		t.Fatalf("first attestation: %v", err)
	}
	before := e.fetchAgent(spiffeid.RequireFromString("spiffe://example.org/writ/agent/x509pop/" + sha1Hex(node.Cert.Raw)))
	_, _, err := e.attestNode(node, func([]byte, []byte) []byte { return recorded })
	wantCode(t, err, codes.PermissionDenied, "")
	if !strings.Contains(err.Error(), "proof of possession failed") {
		t.Errorf("replay refused with %q", err)
	}
	after := e.fetchAgent(before.SPIFFEID)
	if after.SerialNumber != before.SerialNumber {
		t.Error("a replayed answer changed the agent record")
	}
}

// TestAttestNodeSameCertificate documents the rule for two hosts with one
// certificate: they are one agent, and the later attestation wins: the
// earlier SVID no longer authenticates.
func TestAttestNodeSameCertificate(t *testing.T) {
	e := newX509popEnv(t)
	node := e.ca.Issue(t, nodepki.Node{CN: "web1"}, testStart())
	_, first, err := e.attestNode(node, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, second, err := e.attestNode(node, nil)
	if err != nil {
		t.Fatalf("second host: %v", err)
	}
	if first.id != second.id {
		t.Fatalf("one certificate, two agent IDs: %s, %s", first.id, second.id)
	}
	_, err = first.client.RenewAgent(ctxT(t), &nodev1.RenewAgentRequest{Csr: newCSR(t, first.key)})
	wantCode(t, err, codes.PermissionDenied, "")
	if _, err := second.client.RenewAgent(ctxT(t), &nodev1.RenewAgentRequest{Csr: newCSR(t, second.key)}); err != nil {
		t.Errorf("the later attestation's SVID is refused: %v", err)
	}
	if n := e.agentCount(); n != 1 {
		t.Errorf("%d agent records, want 1", n)
	}
}

// TestAttestNodeBanned: a banned x509pop agent cannot attest its way back.
func TestAttestNodeBanned(t *testing.T) {
	e := newX509popEnv(t)
	node := e.ca.Issue(t, nodepki.Node{CN: "web1"}, testStart())
	_, a, err := e.attestNode(node, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.setBanned(a.id, true)
	_, _, err = e.attestNode(node, nil)
	wantCode(t, err, codes.PermissionDenied, "agent is banned")
	if !e.fetchAgent(a.id).Banned {
		t.Error("re-attestation unbanned the agent")
	}
}

// TestAttestNodeTypeNotEnabled: a type the server does not run is refused
// by name; the join_token type always runs.
func TestAttestNodeTypeNotEnabled(t *testing.T) {
	e := newEnv(t, envOptions{})
	stream, err := e.client(nil).AttestNode(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&nodev1.AttestNodeRequest{AttestationType: "sshpop", Payload: []byte("{}"), Csr: newCSR(t, newKey(t))}); err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantCode(t, err, codes.PermissionDenied, `no identity issued: node attestation type "sshpop" is not enabled on this server`)

	stream, err = e.client(nil).AttestNode(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	if err := stream.Send(&nodev1.AttestNodeRequest{AttestationType: "join_token", Payload: []byte(e.newToken(agentA, time.Hour)), Csr: newCSR(t, key)}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("join_token over AttestNode: %v", err)
	}
	if len(resp.SvidChain) == 0 || len(resp.NodeSelectors) != 0 {
		t.Errorf("join_token answer: %d certificates, node selectors %q", len(resp.SvidChain), resp.NodeSelectors)
	}
}

// TestNodeAlias: workload entries parented to a node alias go to every
// agent whose node selectors match the alias, and move when the alias's
// selectors change.
func TestNodeAlias(t *testing.T) {
	e := newX509popEnv(t)
	now := testStart()
	attest := func(cn, ou string) *agent {
		_, a, err := e.attestNode(e.ca.Issue(t, nodepki.Node{CN: cn, OU: []string{ou}}, now), nil)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	web1, web2, db1 := attest("web1", "web"), attest("web2", "web"), attest("db1", "db")
	server := "spiffe://example.org/writ/server"
	alias := e.createEntry("spiffe://example.org/cluster/web", server, func(en *entry.Entry) {
		en.Selectors = []entry.Selector{{Type: "x509pop", Value: "subject:ou:web"}}
	})
	wl := e.createEntry("spiffe://example.org/frontend", "spiffe://example.org/cluster/web", nil)
	own := e.createEntry("spiffe://example.org/db-only", db1.id.String(), nil)

	s1, s2, s3 := e.sync(web1), e.sync(web2), e.sync(db1)
	want := entryIDs(wl)
	s1.until("web1 has the alias's entry", func() bool { return slices.Equal(s1.ids(), want) })
	s2.until("web2 has the alias's entry", func() bool { return slices.Equal(s2.ids(), want) })
	s3.until("db1 has its own entry", func() bool { return slices.Equal(s3.ids(), entryIDs(own)) })
	for _, a := range []*agent{web1, web2} {
		resp, err := a.client.BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{Requests: []*nodev1.X509SVIDRequest{{EntryId: wl.ID, Csr: newCSR(t, newKey(t))}}})
		if err != nil || resp.Results[0].Status.GetCode() != int32(codes.OK) {
			t.Errorf("member %s cannot sign for the alias's entry: %v %v", a.id, err, resp)
		}
	}
	resp, err := db1.client.BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{Requests: []*nodev1.X509SVIDRequest{{EntryId: wl.ID, Csr: newCSR(t, newKey(t))}}})
	if err != nil || resp.Results[0].Status.GetCode() != int32(codes.PermissionDenied) {
		t.Errorf("non-member signs for the alias's entry: %v %v", err, resp)
	}

	// A new entry under the alias reaches both members.
	wl2 := e.createEntry("spiffe://example.org/frontend2", "spiffe://example.org/cluster/web", nil)
	want = entryIDs(wl, wl2)
	s1.until("web1 has the new entry", func() bool { return slices.Equal(s1.ids(), want) })
	s2.until("web2 has the new entry", func() bool { return slices.Equal(s2.ids(), want) })

	// Point the alias at db: the entries move.
	start := time.Now()
	if _, err := e.store.UpdateEntry(context.Background(), alias.ID, func(en *entry.Entry) error {
		en.Selectors = []entry.Selector{{Type: "x509pop", Value: "subject:ou:db"}}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	s3.until("db1 has the alias's entries", func() bool { return slices.Equal(s3.ids(), entryIDs(own, wl, wl2)) })
	s1.until("web1 lost them", func() bool { return len(s1.ids()) == 0 })
	s2.until("web2 lost them", func() bool { return len(s2.ids()) == 0 })
	t.Logf("alias selector change delivered in %v", time.Since(start))
}

// TestAttestNodeNoTakeover: an x509pop path template that names a join
// token agent's ID does not take that agent over.
func TestAttestNodeNoTakeover(t *testing.T) {
	now := testStart()
	ca := nodepki.NewCA(t, "org CA", now)
	e := newEnv(t, envOptions{nodeAttestors: func(clk clock.Clock) []nodeapi.NodeAttestor {
		tmpl, err := x509pop.ParsePathTemplate("{{ .Subject.CommonName }}")
		if err != nil {
			t.Fatal(err)
		}
		v, err := x509pop.NewVerifier(x509pop.Config{TrustDomain: td, Roots: func() []*x509.Certificate { return []*x509.Certificate{ca.Cert} }, PathTemplate: tmpl, Clock: clk})
		if err != nil {
			t.Fatal(err)
		}
		return []nodeapi.NodeAttestor{v}
	}})
	a := e.attest(agentA)
	_, _, err := e.attestNode(ca.Issue(t, nodepki.Node{CN: "a"}, now), nil)
	wantCode(t, err, codes.PermissionDenied, "no identity issued: the agent ID is held by an agent of another attestation type")
	if rec := e.fetchAgent(a.id); rec.AttestationType != nodeapi.AttestationTypeJoinToken || rec.SerialNumber != a.serial() {
		t.Errorf("join token agent changed: %+v", rec)
	}
	// A fresh CN makes a new x509pop agent under the template's path.
	_, b, err := e.attestNode(ca.Issue(t, nodepki.Node{CN: "web1"}, now), nil)
	if err != nil || b.id.String() != "spiffe://example.org/writ/agent/web1" {
		t.Fatalf("templated agent: %v %v", b, err)
	}
}

// TestAttestNodeRefusesOwnSVIDs: with one organisation CA as both Writ's
// upstream and the x509pop CA, Writ's own agent and workload SVIDs verify
// against the x509pop roots, and are refused as node certificates.
func TestAttestNodeRefusesOwnSVIDs(t *testing.T) {
	org := nodepki.NewCA(t, "org CA", testStart())
	x := newX509popEnvWith(t, envOptions{authority: &keymanager.Upstream{
		Issuer: &x509ca.Issuer{Cert: org.Cert, Signer: org.Key},
		Roots:  []*x509.Certificate{org.Cert},
	}})
	roots := []*x509.Certificate{org.Cert}
	x.roots.Store(&roots)

	a := x.attest(agentA)
	en := x.createEntry("spiffe://example.org/web", agentA, nil)
	wkey := newKey(t)
	resp, err := a.client.BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{Requests: []*nodev1.X509SVIDRequest{{EntryId: en.ID, Csr: newCSR(t, wkey)}}})
	if err != nil {
		t.Fatal(err)
	}
	agents := x.agentCount()
	for _, tc := range []struct {
		name  string
		chain [][]byte
		key   crypto.Signer
	}{
		{"agent SVID", a.cert.Certificate, a.key},
		{"workload SVID", resp.Results[0].SvidChain, wkey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := x.attestNodeChain(x.client(nil), tc.chain, tc.key, nil)
			wantCode(t, err, codes.PermissionDenied, "")
		})
	}
	if n := x.agentCount(); n != agents {
		t.Errorf("%d agents, want %d", n, agents)
	}
	// A node certificate of the same CA attests.
	if _, _, err := x.attestNode(org.Issue(t, nodepki.Node{CN: "web1"}, testStart()), nil); err != nil {
		t.Fatalf("node certificate: %v", err)
	}
}
