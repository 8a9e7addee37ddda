package nodeapi_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/attest/jointoken"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/nodeapi"

	"writ.dev/writ/internal/logkey"
)

const (
	agentA = "spiffe://example.org/writ/agent/a"
	agentB = "spiffe://example.org/writ/agent/b"
	// msgBadToken is the one message for wrong, expired and used tokens.
	msgBadToken = "join token is invalid, expired or already used"
)

func TestAttest(t *testing.T) {
	e := newEnv(t, envOptions{})
	key := newKey(t)
	resp, err := e.client(nil).Attest(ctxT(t), &nodev1.AttestRequest{JoinToken: e.newToken(agentA, time.Hour), Csr: newCSR(t, key)})
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	if len(resp.SvidChain) != 1 {
		t.Fatalf("chain has %d certificates, want the leaf only", len(resp.SvidChain))
	}
	bundle, err := spiffebundle.Parse(td, resp.Bundle)
	if err != nil {
		t.Fatalf("bundle: %v", err)
	}
	if !bundle.Equal(e.bundle()) {
		t.Error("returned bundle is not the stored bundle")
	}
	id, _, err := x509svid.ParseAndVerify(resp.SvidChain, bundle, x509svid.WithTime(e.clock.Now()))
	if err != nil {
		t.Fatalf("agent SVID does not verify: %v", err)
	}
	if id.String() != agentA {
		t.Errorf("agent SVID is for %s, want %s", id, agentA)
	}
	leaf, _ := x509.ParseCertificate(resp.SvidChain[0])
	if len(leaf.DNSNames) != 0 || leaf.IsCA {
		t.Errorf("agent SVID has DNS names %q, IsCA %v", leaf.DNSNames, leaf.IsCA)
	}
	if got, want := leaf.NotAfter.Sub(e.clock.Now()), nodeapi.DefaultX509SVIDTTL; got > want || got < want-time.Second {
		t.Errorf("agent SVID lives %v, want %v", got, want)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		t.Error("agent SVID is not for the CSR's key")
	}

	a := e.fetchAgent(spiffeid.RequireFromString(agentA))
	want := datastore.Agent{
		SPIFFEID:        id,
		AttestationType: "join_token",
		SerialNumber:    leaf.SerialNumber.String(),
		CertNotAfter:    leaf.NotAfter,
		CreatedAt:       e.clock.Now(),
		UpdatedAt:       e.clock.Now(),
	}
	if a.SPIFFEID != want.SPIFFEID || a.AttestationType != want.AttestationType || a.SerialNumber != want.SerialNumber ||
		a.PrevSerialNumber != "" || !a.CertNotAfter.Equal(want.CertNotAfter) || !a.CreatedAt.Equal(want.CreatedAt) ||
		!a.UpdatedAt.Equal(want.UpdatedAt) || a.Banned {
		t.Errorf("agent record\n got %+v\nwant %+v", a, want)
	}
	if recs := e.logs.find("agent attested"); len(recs) != 1 || recs[0].attrs[logkey.SPIFFEID] != agentA {
		t.Errorf("want one 'agent attested' record for %s, got %+v", agentA, recs)
	}
}

func TestAttestRefusesToken(t *testing.T) {
	tests := []struct {
		name string
		// token returns the token to present.
		token func(e *env) string
	}{
		{name: "wrong", token: func(*env) string { return jointoken.New() }},
		{name: "empty", token: func(*env) string { return "" }},
		{name: "too long", token: func(*env) string { return strings.Repeat("a", 100_000) }},
		{name: "expired", token: func(e *env) string {
			tok := e.newToken(agentA, time.Minute)
			e.clock.Advance(time.Minute)
			return tok
		}},
		{name: "used", token: func(e *env) string {
			tok := e.newToken(agentA, time.Hour)
			if _, err := e.client(nil).Attest(ctxT(e.t), &nodev1.AttestRequest{JoinToken: tok, Csr: newCSR(e.t, newKey(e.t))}); err != nil {
				e.t.Fatal(err)
			}
			return tok
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, envOptions{})
			tok := tt.token(e)
			_, err := e.client(nil).Attest(ctxT(t), &nodev1.AttestRequest{JoinToken: tok, Csr: newCSR(t, newKey(t))})
			wantCode(t, err, codes.PermissionDenied, msgBadToken)
			if tok == "" {
				return
			}
			for _, rec := range e.logs.all() {
				if strings.Contains(rec.text, tok[:min(len(tok), 40)]) || strings.Contains(rec.text, jointoken.Hash(tok)) {
					t.Errorf("log record carries the token or its hash: %s", rec.text)
				}
			}
			if len(e.logs.find("attestation refused")) == 0 {
				t.Error("refusal not logged")
			}
		})
	}
}

func TestAttestBadCSRKeepsToken(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.newToken(agentA, time.Hour)
	c := e.client(nil)
	for _, csr := range [][]byte{nil, []byte("not a CSR")} {
		_, err := c.Attest(ctxT(t), &nodev1.AttestRequest{JoinToken: tok, Csr: csr})
		wantCode(t, err, codes.InvalidArgument, "")
	}
	if _, err := c.Attest(ctxT(t), &nodev1.AttestRequest{JoinToken: tok, Csr: newCSR(t, newKey(t))}); err != nil {
		t.Fatalf("token was used up by a bad CSR: %v", err)
	}
}

// TestAttestConcurrent races two Attest calls, on separate connections,
// with one token: exactly one gets an SVID.
func TestAttestConcurrent(t *testing.T) {
	e := newEnv(t, envOptions{})
	clients := []nodev1.NodeServiceClient{e.client(nil), e.client(nil)}
	for round := range 10 {
		tok := e.newToken(agentA, time.Hour)
		csrs := [][]byte{newCSR(t, newKey(t)), newCSR(t, newKey(t))}
		errs := make([]error, 2)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range 2 {
			wg.Go(func() {
				<-start
				_, errs[i] = clients[i].Attest(ctxT(t), &nodev1.AttestRequest{JoinToken: tok, Csr: csrs[i]})
			})
		}
		close(start)
		wg.Wait()
		ok := 0
		for _, err := range errs {
			if err == nil {
				ok++
			} else {
				wantCode(t, err, codes.PermissionDenied, msgBadToken)
			}
		}
		if ok != 1 {
			t.Fatalf("round %d: %d of 2 attestations with one token succeeded: %v", round, ok, errs)
		}
	}
}

func TestAttestBannedAgent(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	e.setBanned(a.id, true)
	tok := e.newToken(agentA, time.Hour)
	_, err := e.client(nil).Attest(ctxT(t), &nodev1.AttestRequest{JoinToken: tok, Csr: newCSR(t, newKey(t))})
	wantCode(t, err, codes.PermissionDenied, "agent is banned")
	if rec := e.fetchAgent(a.id); !rec.Banned || rec.SerialNumber != a.serial() {
		t.Errorf("banned agent's record changed: %+v", rec)
	}
	// The token is used up all the same.
	if _, err := e.store.ConsumeJoinToken(context.Background(), jointoken.Hash(tok), e.clock.Now()); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("token after a banned attestation: %v, want ErrNotFound", err)
	}
	// Unbanned, it may attest again.
	e.setBanned(a.id, false)
	e.attest(agentA)
}

// TestReattestReplacesRecord: a second attestation as the same agent
// replaces the record, and the earlier certificate stops working.
func TestReattestReplacesRecord(t *testing.T) {
	e := newEnv(t, envOptions{})
	first := e.attest(agentA)
	created := e.fetchAgent(first.id).CreatedAt
	e.clock.Advance(time.Minute)
	second := e.attest(agentA)
	rec := e.fetchAgent(first.id)
	if rec.SerialNumber != second.serial() || rec.PrevSerialNumber != "" || !rec.CreatedAt.Equal(created) || !rec.UpdatedAt.Equal(e.clock.Now()) {
		t.Errorf("record after re-attestation: %+v", rec)
	}
	_, err := first.client.RenewAgent(ctxT(t), &nodev1.RenewAgentRequest{Csr: newCSR(t, first.key)})
	wantCode(t, err, codes.PermissionDenied, "agent is not attested")
	if _, err := second.client.RenewAgent(ctxT(t), &nodev1.RenewAgentRequest{Csr: newCSR(t, second.key)}); err != nil {
		t.Errorf("new certificate refused: %v", err)
	}
}

// TestAttestRefusesServerID: a token naming the server's own ID, or any
// ID outside /writ/agent/ (which the admin API never issues a token for;
// a token stored by an earlier version may), yields no identity.
func TestAttestRefusesServerID(t *testing.T) {
	for _, id := range []string{"spiffe://example.org/writ/server", "spiffe://example.org/host/node1", "spiffe://example.org/writ/agent"} {
		t.Run(id, func(t *testing.T) {
			e := newEnv(t, envOptions{})
			tok := e.newToken(id, time.Hour)
			_, err := e.client(nil).Attest(ctxT(t), &nodev1.AttestRequest{JoinToken: tok, Csr: newCSR(t, newKey(t))})
			wantCode(t, err, codes.PermissionDenied, "no identity issued")
			if _, err := e.store.FetchAgent(context.Background(), spiffeid.RequireFromString(id)); !errors.Is(err, datastore.ErrNotFound) {
				t.Errorf("agent record for %s: %v", id, err)
			}
		})
	}
}

// TestAttestDatastoreUnavailable: a datastore that cannot be reached for
// now is Unavailable to the agent, which retries, not Internal.
func TestAttestDatastoreUnavailable(t *testing.T) {
	e := newEnv(t, envOptions{})
	down := fmt.Errorf("connect: %w", datastore.ErrUnavailable)
	e.store.consumeErr.Store(&down)
	_, err := e.client(nil).Attest(ctxT(t), &nodev1.AttestRequest{JoinToken: e.newToken(agentA, time.Hour), Csr: newCSR(t, newKey(t))})
	wantCode(t, err, codes.Unavailable, "")
}
