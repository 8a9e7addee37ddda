package nodeapi_test

import (
	"context"
	"encoding/hex"
	"slices"
	"testing"

	"writ.dev/writ/ca/datastore"
)

// A rotation can wait until every stream has been sent the bundle with
// the new keys, and a taint reaches every stream with the tainted key IDs.
func TestSyncTaintedAuthorities(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := ctxT(t)
	a := e.attest(agentA)
	s := e.sync(a)
	m := s.next()
	if m.Tainted == nil || len(m.Tainted.X509AuthorityIds)+len(m.Tainted.JwtKeyIds) != 0 {
		t.Fatalf("first message: tainted = %v, want present and empty", m.Tainted)
	}
	km := e.km.Manager
	oldX509 := hex.EncodeToString(km.Active().X509.Cert.SubjectKeyId)
	oldJWT := km.Active().JWT.ID
	streams := -1
	if _, err := km.Rotate(ctx, func(ctx context.Context) error {
		seq, _ := e.bundle().SequenceNumber()
		var err error
		streams, err = e.svc.WaitBundleSent(ctx, seq)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if streams != 1 {
		t.Fatalf("WaitBundleSent counted %d streams, want 1", streams)
	}
	for _, kind := range []datastore.CAKeyKind{datastore.CAKeyX509, datastore.CAKeyJWT} {
		id := oldX509
		if kind == datastore.CAKeyJWT {
			id = oldJWT
		}
		if _, err := km.Taint(ctx, kind, id); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	s.until("both taints pushed", func() bool {
		if tn := s.lastTainted; tn != nil {
			got = append(slices.Clone(tn.X509AuthorityIds), tn.JwtKeyIds...)
		}
		return slices.Equal(got, []string{oldX509, oldJWT})
	})
}
