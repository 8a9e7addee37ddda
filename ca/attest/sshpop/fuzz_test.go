package sshpop_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"writ.dev/writ/ca/attest/sshpop"
	"writ.dev/writ/ca/clock/fakeclock"
)

// FuzzAttest: no payload or answer makes the verifier panic, and none
// but a real proof attests.
func FuzzAttest(f *testing.F) {
	now := time.Now()
	ca, host := newSigner(f), newSigner(f)
	good, _ := json.Marshal(map[string][]byte{"cert": certify(f, ca, host, now, nil)})
	f.Add(good, []byte("sig"))
	f.Add([]byte(`{"cert":""}`), []byte{})
	v, err := sshpop.NewVerifier(sshpop.Config{TrustDomain: td, Authorities: func() []ssh.PublicKey { return []ssh.PublicKey{ca.PublicKey()} }, Clock: fakeclock.New(now)})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, payload, answer []byte) {
		res, err := v.Attest(context.Background(), payload, func(context.Context, []byte) ([]byte, error) { return answer, nil })
		if err == nil {
			t.Fatalf("attested %s without a proof", res.AgentID)
		}
	})
}
