package x509pop_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"testing"
	"time"

	"writ.dev/writ/ca/attest/x509pop"
	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/internal/nodepki"
)

// FuzzAttest: no payload or challenge answer makes the verifier panic, and
// none but a real proof attests.
func FuzzAttest(f *testing.F) {
	now := time.Now()
	ca := nodepki.NewCA(f, "A", now)
	node := ca.Issue(f, nodepki.Node{CN: "n"}, now)
	good, _ := json.Marshal(map[string][][]byte{"chain": {node.Cert.Raw}})
	f.Add(good, []byte("sig"))
	f.Add([]byte(`{"chain":[]}`), []byte{})
	f.Add([]byte(`{"chain":["AAAA"]}`), []byte{1})
	v, err := x509pop.NewVerifier(x509pop.Config{TrustDomain: td, Roots: func() []*x509.Certificate { return []*x509.Certificate{ca.Cert} }, Clock: fakeclock.New(now)})
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
