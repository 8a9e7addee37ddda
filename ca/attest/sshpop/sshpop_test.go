package sshpop_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/crypto/ssh"

	"writ.dev/writ/ca/attest"
	"writ.dev/writ/ca/attest/sshpop"
	"writ.dev/writ/ca/clock/fakeclock"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func newSigner(t testing.TB) ssh.Signer {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// certify signs host's key with ca; edit adjusts the certificate first.
func certify(t testing.TB, ca, host ssh.Signer, now time.Time, edit func(*ssh.Certificate)) []byte {
	t.Helper()
	c := &ssh.Certificate{
		Key:             host.PublicKey(),
		CertType:        ssh.HostCert,
		KeyId:           "host",
		ValidPrincipals: []string{"host1.example.org"},
		ValidAfter:      uint64(now.Add(-time.Minute).Unix()),
		ValidBefore:     uint64(now.Add(time.Hour).Unix()),
	}
	if edit != nil {
		edit(c)
	}
	if err := c.SignCert(rand.Reader, ca); err != nil {
		t.Fatal(err)
	}
	return ssh.MarshalAuthorizedKey(c)
}

func TestAttest(t *testing.T) {
	now := time.Now()
	ca, other := newSigner(t), newSigner(t)
	clk := fakeclock.New(now)
	v, err := sshpop.NewVerifier(sshpop.Config{TrustDomain: td, Authorities: func() []ssh.PublicKey { return []ssh.PublicKey{ca.PublicKey()} }, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	host := newSigner(t)
	tests := []struct {
		name    string
		signer  ssh.Signer
		cert    []byte
		respond func(a *sshpop.Agent) attest.Challenger
		err     error
	}{
		{name: "good", cert: certify(t, ca, host, now, nil)},
		{name: "user certificate", cert: certify(t, ca, host, now, func(c *ssh.Certificate) { c.CertType = ssh.UserCert }), err: attest.ErrNotTrusted},
		{name: "expired", cert: certify(t, ca, host, now, func(c *ssh.Certificate) { c.ValidBefore = uint64(now.Add(-time.Second).Unix()) }), err: attest.ErrNotTrusted},
		{name: "not yet valid", cert: certify(t, ca, host, now, func(c *ssh.Certificate) { c.ValidAfter = uint64(now.Add(time.Hour).Unix()) }), err: attest.ErrNotTrusted},
		{name: "another CA", cert: certify(t, other, host, now, nil), err: attest.ErrNotTrusted},
		{name: "no principal", cert: certify(t, ca, host, now, func(c *ssh.Certificate) { c.ValidPrincipals = nil }), err: attest.ErrNotTrusted},
		{name: "replayed answer", cert: certify(t, ca, host, now, nil), respond: func(a *sshpop.Agent) attest.Challenger {
			old, _ := a.Respond(context.Background(), make([]byte, attest.NonceSize))
			return func(context.Context, []byte) ([]byte, error) { return old, nil }
		}, err: attest.ErrProofFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := sshpop.NewAgent(tt.cert, host)
			if err != nil {
				t.Fatal(err)
			}
			p, err := a.Payload(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			respond := attest.Challenger(a.Respond)
			if tt.respond != nil {
				respond = tt.respond(a)
			}
			res, err := v.Attest(context.Background(), p, respond)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := "spiffe://example.org/writ/agent/sshpop/" + sshpop.Fingerprint(host.PublicKey()); res.AgentID.String() != want {
				t.Errorf("agent ID %s, want %s", res.AgentID, want)
			}
			var sel []string
			for _, s := range res.Selectors {
				sel = append(sel, s.String())
			}
			want := []string{"sshpop:ca:fingerprint:" + sshpop.Fingerprint(ca.PublicKey()), "sshpop:principal:host1.example.org"}
			if !slices.Equal(sel, want) {
				t.Errorf("selectors %q, want %q", sel, want)
			}
		})
	}
}

func TestNewAgentMismatch(t *testing.T) {
	ca := newSigner(t)
	cert := certify(t, ca, newSigner(t), time.Now(), nil)
	if _, err := sshpop.NewAgent(cert, newSigner(t)); err == nil {
		t.Fatal("NewAgent accepted another host key")
	}
	if _, err := sshpop.NewAgent(ssh.MarshalAuthorizedKey(ca.PublicKey()), ca); err == nil {
		t.Fatal("NewAgent accepted a plain public key as a certificate")
	}
}
