package agent_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/agent"
	"writ.dev/writ/agent/internal/fakenode"
	nodev1 "writ.dev/writ/ca/api/node/v1"
)

// TestFederatedBundlesFromSync: the agent takes the foreign bundles Sync
// sends for its entries, skips a malformed one keeping the last good
// bundle, drops removed ones, keeps serving them through a server outage,
// and saves them with its state so that a restart finds them.
func TestFederatedBundlesFromSync(t *testing.T) {
	e := newEnv(t, fakenode.Options{})
	b := spiffeid.RequireTrustDomainFromString("b.test")
	c := spiffeid.RequireTrustDomainFromString("c.test")
	w := e.srv.Entry("/web", "unix:uid:1000")
	w.FederatesWith = []string{"b.test", "c.test"}
	e.srv.SetEntries(w)
	r := e.start(e.attestConfig())
	e.ready(r)
	sel := mustSels(t, "unix:uid:1000")

	bb := spiffebundle.New(b)
	bb.SetSequenceNumber(4)
	if err := bb.AddJWTAuthority("kb", e.srv.CA().PublicKey); err != nil {
		t.Fatal(err)
	}
	bDoc, err := bb.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	cb := spiffebundle.New(c)
	if err := cb.AddJWTAuthority("kc", e.srv.CA().PublicKey); err != nil {
		t.Fatal(err)
	}
	cDoc, err := cb.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	e.srv.Push(&nodev1.SyncResponse{FederatedBundles: map[string][]byte{"b.test": bDoc, "c.test": cDoc}})
	eventually(t, "both foreign bundles", func() bool { return len(r.a.Cache().FederatedBundles(sel)) == 2 })

	// Malformed, under the local trust domain, or under a bad name: the
	// last good bundle stays.
	e.srv.Push(&nodev1.SyncResponse{FederatedBundles: map[string][]byte{
		"b.test":                   []byte("{not json"),
		e.srv.TrustDomain().Name(): bDoc,
		"B.TEST":                   bDoc,
	}})
	e.srv.Push(&nodev1.SyncResponse{RemovedFederatedBundles: []string{"c.test"}})
	eventually(t, "c.test removed", func() bool { return len(r.a.Cache().FederatedBundles(sel)) == 1 })
	got := r.a.Cache().FederatedBundles(sel)
	if seq, _ := got[0].SequenceNumber(); got[0].TrustDomain() != b || seq != 4 {
		t.Fatalf("kept %s sequence %d, want b.test sequence 4", got[0].TrustDomain().Name(), seq)
	}

	// Through an outage the bundle is still served.
	e.srv.Stop()
	if len(r.a.Cache().FederatedBundles(sel)) != 1 {
		t.Fatal("foreign bundle dropped during the outage")
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}

	// Saved with the agent's state.
	data, err := os.ReadFile(filepath.Join(e.dir, agent.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	var saved struct {
		Federated map[string]json.RawMessage `json:"federated"`
	}
	if err := json.Unmarshal(data, &saved); err != nil || len(saved.Federated) != 1 || saved.Federated["b.test"] == nil {
		t.Fatalf("saved state: %v, federated %v", err, saved.Federated)
	}
	// A restart, with the server still down, finds it.
	r2 := e.start(e.config())
	eventually(t, "the saved foreign bundle", func() bool {
		all := r2.a.Cache().AllFederatedBundles()
		return all[b] != nil && all[b].Equal(bb)
	})
}
