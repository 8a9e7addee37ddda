package nodeapi_test

import (
	"context"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/entry"
)

// setForeignBundle stores a bundle of td with one JWT authority and
// sequence number seq, and returns its document.
func (e *env) setForeignBundle(td spiffeid.TrustDomain, seq uint64) []byte {
	e.t.Helper()
	b, err := e.store.UpdateBundle(context.Background(), td, func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
		b := spiffebundle.New(td)
		if err := b.AddJWTAuthority("kid-"+td.Name(), newKey(e.t).Public()); err != nil {
			return nil, err
		}
		b.SetSequenceNumber(seq)
		return b, nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	doc, err := b.Marshal()
	if err != nil {
		e.t.Fatal(err)
	}
	return doc
}

func fedKeys(m *nodev1.SyncResponse) []string {
	return slices.Sorted(maps.Keys(m.GetFederatedBundles()))
}

// TestSyncFederatedBundles: an agent is sent the bundles of the trust
// domains its entries federate with, in the full set and whenever one of
// them changes or the set changes, and told to drop the ones it no
// longer needs; other foreign bundles never reach it.
func TestSyncFederatedBundles(t *testing.T) {
	e := newEnv(t, envOptions{})
	bTD := spiffeid.RequireTrustDomainFromString("b.test")
	cTD := spiffeid.RequireTrustDomainFromString("c.test")
	bDoc := e.setForeignBundle(bTD, 1)
	cDoc := e.setForeignBundle(cTD, 1)
	a := e.attest(agentA)
	other := e.attest(agentB)
	fedB := e.createEntry("spiffe://example.org/fed", agentA, func(en *entry.Entry) { en.FederatesWith = []spiffeid.TrustDomain{bTD} })
	e.createEntry("spiffe://example.org/plain", agentA, nil)
	e.createEntry("spiffe://example.org/other", agentB, nil)

	sa, so := e.sync(a), e.sync(other)
	m := sa.next()
	if !m.Full || !slices.Equal(fedKeys(m), []string{"b.test"}) || string(m.FederatedBundles["b.test"]) != string(bDoc) {
		t.Fatalf("full message: federated %v", fedKeys(m))
	}
	if got := sa.have[fedB.ID].GetFederatesWith(); !slices.Equal(got, []string{"b.test"}) {
		t.Fatalf("entry's federates_with %q", got)
	}
	if m := so.next(); len(m.FederatedBundles) != 0 {
		t.Fatalf("agent without federated entries got %v", fedKeys(m))
	}

	// A new bundle of b.test reaches agent a alone.
	bDoc = e.setForeignBundle(bTD, 2)
	m = sa.next()
	if len(m.Entries) != 0 || !slices.Equal(fedKeys(m), []string{"b.test"}) || string(m.FederatedBundles["b.test"]) != string(bDoc) || len(m.RemovedFederatedBundles) != 0 {
		t.Fatalf("after b.test changed: entries %d federated %v removed %v", len(m.Entries), fedKeys(m), m.RemovedFederatedBundles)
	}
	so.quiet(200 * time.Millisecond)
	// c.test is nobody's concern yet.
	e.setForeignBundle(cTD, 2)
	sa.quiet(200 * time.Millisecond)

	// The entry moves from b.test to c.test.
	_, err := e.store.UpdateEntry(context.Background(), fedB.ID, func(en *entry.Entry) error {
		en.FederatesWith = []spiffeid.TrustDomain{cTD}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	m = sa.next()
	if len(m.Entries) != 1 || !slices.Equal(fedKeys(m), []string{"c.test"}) || !slices.Equal(m.RemovedFederatedBundles, []string{"b.test"}) {
		t.Fatalf("after the entry moved: entries %d federated %v removed %v", len(m.Entries), fedKeys(m), m.RemovedFederatedBundles)
	}
	if string(m.FederatedBundles["c.test"]) == string(cDoc) {
		t.Fatal("sent c.test's first bundle, not its current one")
	}

	// The bundle goes away: the agent drops it.
	if err := e.store.DeleteBundle(context.Background(), cTD); err != nil {
		t.Fatal(err)
	}
	m = sa.next()
	if len(m.FederatedBundles) != 0 || !slices.Equal(m.RemovedFederatedBundles, []string{"c.test"}) {
		t.Fatalf("after c.test's bundle was deleted: federated %v removed %v", fedKeys(m), m.RemovedFederatedBundles)
	}

	// It comes back.
	cDoc = e.setForeignBundle(cTD, 3)
	m = sa.next()
	if string(m.FederatedBundles["c.test"]) != string(cDoc) {
		t.Fatalf("after c.test's bundle came back: federated %v", fedKeys(m))
	}

	// A new stream gets the current set in its full message.
	sa.close()
	sa2 := e.sync(a)
	m = sa2.next()
	if !m.Full || !slices.Equal(fedKeys(m), []string{"c.test"}) || string(m.FederatedBundles["c.test"]) != string(cDoc) {
		t.Fatalf("full message of a new stream: federated %v", fedKeys(m))
	}

	// Deleting the entry removes the bundle.
	if _, err := e.store.DeleteEntry(context.Background(), fedB.ID); err != nil {
		t.Fatal(err)
	}
	m = sa2.next()
	if !slices.Equal(m.DeletedEntryIds, []string{fedB.ID}) || !slices.Equal(m.RemovedFederatedBundles, []string{"c.test"}) {
		t.Fatalf("after the entry was deleted: deleted %v removed %v", m.DeletedEntryIds, m.RemovedFederatedBundles)
	}
}
