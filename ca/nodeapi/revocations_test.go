package nodeapi_test

import (
	"slices"
	"testing"
	"time"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/datastore"
)

func revKeys(rs []*nodev1.Revocation) []string {
	var out []string
	for _, r := range rs {
		if r.Jti != "" {
			out = append(out, "jti:"+r.Jti)
		} else {
			out = append(out, "client:"+r.ClientId)
		}
	}
	return out
}

// TestSyncRevocations: full messages carry every unexpired revocation;
// a revocation recorded later reaches every open stream at once, alone,
// driven by the store's events.
func TestSyncRevocations(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	b := e.attest(agentB)
	now := e.clock.Now()
	put := func(r *datastore.Revocation) {
		t.Helper()
		if err := e.store.PutRevocation(ctxT(t), r); err != nil {
			t.Fatal(err)
		}
	}
	put(&datastore.Revocation{JTI: "t1", RevokedAt: now, ExpiresAt: now.Add(5*time.Minute + 300*time.Millisecond)})
	put(&datastore.Revocation{JTI: "gone", RevokedAt: now.Add(-time.Hour), ExpiresAt: now.Add(-time.Minute)})

	sa := e.sync(a)
	m := sa.next()
	if !m.Full || !slices.Equal(revKeys(m.Revocations), []string{"jti:t1"}) {
		t.Fatalf("full message: full %v, revocations %v", m.Full, m.Revocations)
	}
	// expires_at rounds up, revoked_at down.
	if r := m.Revocations[0]; r.ExpiresAt != now.Add(5*time.Minute).Unix()+1 || r.RevokedAt != now.Unix() {
		t.Errorf("times %d, %d", r.RevokedAt, r.ExpiresAt)
	}
	sb := e.sync(b)
	sb.next()

	put(&datastore.Revocation{ClientID: "spiffe://example.org/web", RevokedAt: now.Add(time.Second), ExpiresAt: now.Add(time.Hour)})
	for _, s := range []*syncStream{sa, sb} {
		m := s.next()
		if m.Full || !slices.Equal(revKeys(m.Revocations), []string{"client:spiffe://example.org/web"}) || len(m.Entries) != 0 || m.Bundle != nil {
			t.Fatalf("after a client revocation: %v", m)
		}
	}
	// Revoked again, later: sent again, alone.
	put(&datastore.Revocation{ClientID: "spiffe://example.org/web", RevokedAt: now.Add(2 * time.Second), ExpiresAt: now.Add(time.Hour)})
	m = sa.next()
	if m.Full || len(m.Revocations) != 1 || m.Revocations[0].RevokedAt != now.Add(2*time.Second).Unix() {
		t.Fatalf("after a second revocation of the client: %v", m)
	}
	// A new stream gets all of them.
	sc := e.sync(a)
	m = sc.next()
	if !m.Full || !slices.Equal(revKeys(m.Revocations), []string{"client:spiffe://example.org/web", "jti:t1"}) {
		t.Fatalf("full message: %v", m.Revocations)
	}
}
