package nodeapi_test

import (
	"context"
	"encoding/hex"
	"slices"
	"testing"

	"writ.dev/writ/ca/datastore"
)

// LocalX509Trust gives the bundle the node API verifies with and, once
// the bundle carrying a taint has reached the streams, the tainted CA.
func TestLocalX509Trust(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := ctxT(t)
	s := e.sync(e.attest(agentA))
	s.next()
	km := e.km.Manager
	oldX509 := km.Active().X509.Cert
	b, tainted := e.svc.LocalX509Trust()
	if b == nil || !slices.ContainsFunc(b.X509Authorities(), oldX509.Equal) || len(tainted) != 0 {
		t.Fatalf("LocalX509Trust before the taint: %v, tainted %v", b, tainted)
	}
	if _, err := km.Rotate(ctx, func(context.Context) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := km.Taint(ctx, datastore.CAKeyX509, hex.EncodeToString(oldX509.SubjectKeyId)); err != nil {
		t.Fatal(err)
	}
	seq, _ := e.bundle().SequenceNumber()
	if _, err := e.svc.WaitBundleSent(ctx, seq); err != nil {
		t.Fatal(err)
	}
	b, tainted = e.svc.LocalX509Trust()
	if got, _ := b.SequenceNumber(); got != seq || !slices.Equal(tainted, []string{hex.EncodeToString(oldX509.SubjectKeyId)}) {
		t.Fatalf("LocalX509Trust after the taint: sequence %d (want %d), tainted %v", got, seq, tainted)
	}
}
