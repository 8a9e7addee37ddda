package nodeapi_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/attest/x509pop"
	"writ.dev/writ/internal/nodepki"
)

const msgLoadRefused = "node attestation refused: too many in progress"

// wantBusy fails the test unless err is ResourceExhausted with msg (any,
// if empty) and a RetryInfo detail, which agents take as "retry later".
func wantBusy(t testing.TB, err error, msg string) {
	t.Helper()
	wantCode(t, err, codes.ResourceExhausted, msg)
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().AsDuration() > 0 {
			return
		}
	}
	t.Fatalf("%v carries no RetryInfo", err)
}

// holdAttestNode starts an x509pop AttestNode stream for node over c and
// waits for the server's challenge, which it leaves unanswered: the
// attestation stays in progress until cancel is called (the server's
// challenge timeout runs on the fake clock). It returns the error of a
// stream that ends instead.
func (x *x509popEnv) holdAttestNode(c nodev1.NodeServiceClient, node *nodepki.Cert) (cancel context.CancelFunc, err error) {
	x.t.Helper()
	ag, err := x509pop.NewAgent([][]byte{node.Cert.Raw}, node.Key)
	if err != nil {
		x.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctxT(x.t))
	x.t.Cleanup(cancel)
	stream, err := c.AttestNode(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	payload, _ := ag.Payload(ctx)
	if err := stream.Send(&nodev1.AttestNodeRequest{AttestationType: x509pop.Type, Payload: payload, Csr: newCSR(x.t, newKey(x.t))}); err != nil && !errors.Is(err, context.Canceled) {
		// (io.EOF if the server has already ended the stream: Recv
		// returns why.)
		x.t.Logf("send: %v", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		cancel()
		return nil, err
	}
	if len(resp.GetChallenge()) == 0 {
		x.t.Fatalf("AttestNode answered %v, want a challenge", resp)
	}
	return cancel, nil
}

// mustHold is holdAttestNode that fails t if the stream ends.
func (x *x509popEnv) mustHold(c nodev1.NodeServiceClient, node *nodepki.Cert) context.CancelFunc {
	x.t.Helper()
	cancel, err := x.holdAttestNode(c, node)
	if err != nil {
		x.t.Fatalf("AttestNode refused: %v", err)
	}
	return cancel
}

// holdWhenFree holds an attestation over c once the server admits one,
// refusals meanwhile being for load only.
func (x *x509popEnv) holdWhenFree(c nodev1.NodeServiceClient, node *nodepki.Cert) context.CancelFunc {
	x.t.Helper()
	var held context.CancelFunc
	eventually(x.t, "attestation slot given back", func() bool {
		cancel, err := x.holdAttestNode(c, node)
		if err != nil {
			wantBusy(x.t, err, "")
			return false
		}
		held = cancel
		return true
	})
	return held
}

func TestAttestNodePerSourceBound(t *testing.T) {
	x := newX509popEnvWith(t, envOptions{maxAttestations: 3, maxAttestationsPerSource: 2})
	ag := x.attest("spiffe://example.org/writ/agent/a1")
	node := x.ca.Issue(t, nodepki.Node{CN: "web1"}, testStart())
	fromA := nodev1.NewNodeServiceClient(x.dialFrom("127.0.0.1", nil))
	fromB := nodev1.NewNodeServiceClient(x.dialFrom("127.0.0.2", nil))

	held1 := x.mustHold(fromA, node)
	x.mustHold(fromA, node)
	_, err := x.holdAttestNode(fromA, node)
	wantBusy(t, err, "too many node attestations in progress from this address; retry later (at most 2)")
	recs := x.logs.find(msgLoadRefused)
	if len(recs) != 1 {
		t.Fatalf("%d %q records, want 1", len(recs), msgLoadRefused)
	}
	if r := recs[0]; r.level != slog.LevelWarn || !strings.HasPrefix(r.attrs["peer_addr"], "127.0.0.1:") || r.attrs["reason"] != "per-source bound reached" || r.attrs["method"] != nodev1.NodeService_AttestNode_FullMethodName {
		t.Errorf("refusal logged as %s", r.text)
	}
	// A unary Attest from the same address is counted too.
	_, err = fromA.Attest(ctxT(t), &nodev1.AttestRequest{JoinToken: x.newToken("spiffe://example.org/writ/agent/a2", time.Hour), Csr: newCSR(t, newKey(t))})
	wantBusy(t, err, "")

	// Another address attests, and an attested agent on the full
	// address is served.
	if _, _, err := x.attestNodeVia(fromB, node, nil); err != nil {
		t.Fatalf("AttestNode from another address: %v", err)
	}
	if _, err := ag.client.RenewAgent(ctxT(t), &nodev1.RenewAgentRequest{Csr: newCSR(t, ag.key)}); err != nil {
		t.Fatalf("RenewAgent of an attested agent: %v", err)
	}

	// An agent that gives up frees its slot.
	held1()
	x.holdWhenFree(fromA, node)
}

func TestAttestNodeServerWideBound(t *testing.T) {
	x := newX509popEnvWith(t, envOptions{maxAttestations: 3, maxAttestationsPerSource: 2})
	ag := x.attest("spiffe://example.org/writ/agent/a1")
	node := x.ca.Issue(t, nodepki.Node{CN: "web1"}, testStart())
	fromA := nodev1.NewNodeServiceClient(x.dialFrom("127.0.0.1", nil))
	fromB := nodev1.NewNodeServiceClient(x.dialFrom("127.0.0.2", nil))
	fromC := nodev1.NewNodeServiceClient(x.dialFrom("127.0.0.3", nil))

	// Attestations that ended, whether they succeeded or failed, hold
	// no slot.
	for range 3 {
		if _, _, err := x.attestNodeVia(fromB, node, nil); err != nil {
			t.Fatalf("AttestNode: %v", err)
		}
		_, _, err := x.attestNodeVia(fromB, node, func(_, sig []byte) []byte { return append(sig, 0) })
		wantCode(t, err, codes.PermissionDenied, "")
	}
	heldA := []context.CancelFunc{x.mustHold(fromA, node), x.mustHold(fromA, node)}
	heldB := x.mustHold(fromB, node)

	const msg = "too many node attestations in progress on this server; retry later (at most 3)"
	_, err := x.holdAttestNode(fromB, node)
	wantBusy(t, err, msg)
	tok := x.newToken("spiffe://example.org/writ/agent/c1", time.Hour)
	_, err = fromC.Attest(ctxT(t), &nodev1.AttestRequest{JoinToken: tok, Csr: newCSR(t, newKey(t))})
	wantBusy(t, err, msg)
	if recs := x.logs.find(msgLoadRefused); len(recs) != 2 || recs[1].attrs["reason"] != "server-wide bound reached" {
		t.Errorf("refusals logged: %v", recs)
	}

	// Attested agents are served whatever the load.
	if _, err := ag.client.RenewAgent(ctxT(t), &nodev1.RenewAgentRequest{Csr: newCSR(t, ag.key)}); err != nil {
		t.Fatalf("RenewAgent of an attested agent: %v", err)
	}

	// Once the streams end, the refused join token (not consumed) is
	// redeemed.
	for _, cancel := range heldA {
		cancel()
	}
	heldB()
	eventually(t, "attestation slots given back", func() bool {
		_, err := fromC.Attest(ctxT(t), &nodev1.AttestRequest{JoinToken: tok, Csr: newCSR(t, newKey(t))})
		if err != nil {
			wantBusy(t, err, msg)
			return false
		}
		return true
	})
}

// TestAttestRefusedForLoadQuickly checks that a refusal needs no message
// from the caller: the stream ends before it sends anything.
func TestAttestRefusedForLoadQuickly(t *testing.T) {
	x := newX509popEnvWith(t, envOptions{maxAttestations: 1, maxAttestationsPerSource: 1})
	node := x.ca.Issue(t, nodepki.Node{CN: "web1"}, testStart())
	c := x.client(nil)
	x.mustHold(c, node)
	stream, err := c.AttestNode(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantBusy(t, err, "")
}

// TestPerSourceBoundAtMostServerWide: a per-source bound above the
// server-wide one is lowered to it, so that refusals name the bound that
// applies.
func TestPerSourceBoundAtMostServerWide(t *testing.T) {
	x := newX509popEnvWith(t, envOptions{maxAttestations: 2, maxAttestationsPerSource: 5})
	node := x.ca.Issue(t, nodepki.Node{CN: "web1"}, testStart())
	c := x.client(nil)
	x.mustHold(c, node)
	x.mustHold(c, node)
	_, err := x.holdAttestNode(c, node)
	wantBusy(t, err, "too many node attestations in progress from this address; retry later (at most 2)")
}
