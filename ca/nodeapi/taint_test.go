package nodeapi_test

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/nodeapi"
	"writ.dev/writ/internal/logkey"
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

// An X.509-SVID whose entry asks for more than its CA's remaining
// lifetime ends with the CA, and the cut is logged at debug.
func TestSVIDCutToCA(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	long := e.createEntry("spiffe://example.org/long", agentA, func(en *entry.Entry) { en.X509SVIDTTL = entry.MaxTTL })
	short := e.createEntry("spiffe://example.org/short", agentA, func(en *entry.Entry) { en.X509SVIDTTL = time.Hour })
	resp, err := a.client.BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{Requests: []*nodev1.X509SVIDRequest{
		{EntryId: long.ID, Csr: newCSR(t, newKey(t))},
		{EntryId: short.ID, Csr: newCSR(t, newKey(t))},
	}})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(resp.Results[0].GetSvidChain()[0])
	if err != nil {
		t.Fatal(err)
	}
	ca := e.km.Active().X509.Cert
	if !leaf.NotAfter.Equal(ca.NotAfter) {
		t.Fatalf("SVID expires %s, want its CA's NotAfter %s", leaf.NotAfter, ca.NotAfter)
	}
	recs := e.logs.find("X.509-SVID lifetime cut to its CA's")
	if len(recs) != 1 || recs[0].level != slog.LevelDebug || recs[0].attrs[logkey.EntryID] != long.ID {
		t.Fatalf("cut logged as %v, want one debug record for entry %s", recs, long.ID)
	}
}

// WaitBundleAcked waits for every open stream's agent to acknowledge the
// bundle; on timeout it says how many have not.
func TestWaitBundleAcked(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := ctxT(t)
	a, b := e.attest(agentA), e.attest(agentB)
	sa, sb := e.sync(a), e.sync(b)
	sa.next()
	sb.next()
	seq, _ := e.bundle().SequenceNumber()

	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err := e.svc.WaitBundleAcked(short, seq)
	var nack *nodeapi.NotAcknowledgedError
	if !errors.As(err, &nack) || !errors.Is(err, nodeapi.ErrNotAcknowledged) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitBundleAcked before any ack = %v", err)
	}
	if nack.Pending != 2 || nack.Streams != 2 || nack.Sequence != seq {
		t.Fatalf("NotAcknowledgedError %+v, want 2 of 2 for %d", nack, seq)
	}

	done := make(chan error, 1)
	var streams int
	go func() {
		var err error
		streams, err = e.svc.WaitBundleAcked(ctx, seq)
		done <- err
	}()
	// An older sequence number is not enough.
	for _, ag := range []*agent{a, b} {
		if _, err := ag.client.AckBundle(ctx, &nodev1.AckBundleRequest{BundleSequence: seq - 1}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.client.AckBundle(ctx, &nodev1.AckBundleRequest{BundleSequence: seq}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("WaitBundleAcked returned (%v) with one agent not acknowledging", err)
	default:
	}
	if _, err := b.client.AckBundle(ctx, &nodev1.AckBundleRequest{BundleSequence: seq + 5}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil || streams != 2 {
		t.Fatalf("WaitBundleAcked = %d, %v; want 2 streams", streams, err)
	}
	// A stream that closes no longer counts.
	sb.close()
	eventually(t, "the stream gone", func() bool {
		n, err := e.svc.WaitBundleAcked(ctx, seq)
		return err == nil && n == 1
	})
}
