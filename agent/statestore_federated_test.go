package agent

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestStateFederatedBundles: the foreign bundles are saved beside the
// identity, kept by later saves of the SVID, read back on load, written
// only when they change, and a state file holding one under the local
// trust domain's name is refused as inconsistent.
func TestStateFederatedBundles(t *testing.T) {
	ca := newStateCA(t)
	dir := filepath.Join(t.TempDir(), "d")
	d := openDir(t, dir)
	s := newStateStore(d)
	svid := ca.svid(t)
	if err := s.save(svid, ca.bundle); err != nil {
		t.Fatal(err)
	}
	b := spiffeid.RequireTrustDomainFromString("b.test")
	fb := spiffebundle.FromX509Authorities(b, ca.bundle.X509Authorities())
	fb.SetSequenceNumber(3)
	fed := map[spiffeid.TrustDomain]*spiffebundle.Bundle{b: fb}
	if wrote, err := s.saveFederated(fed); err != nil || !wrote {
		t.Fatalf("saveFederated: %v %v", wrote, err)
	}
	if wrote, err := s.saveFederated(map[spiffeid.TrustDomain]*spiffebundle.Bundle{b: fb.Clone()}); err != nil || wrote {
		t.Fatalf("saveFederated of the same bundles wrote: %v %v", wrote, err)
	}
	// A renewal keeps them.
	if err := s.saveSVID(ca.svid(t)); err != nil {
		t.Fatal(err)
	}
	d.Close()
	st := loadFresh(t, dir, ca.now)
	if st.svid == nil || len(st.federated) != 1 || !st.federated[b].Equal(fb) {
		t.Fatalf("loaded SVID %v, federated %v", st.svid != nil, st.federated)
	}
	checkPerms(t, dir)

	// A foreign bundle under the local trust domain's name is not ours.
	path := filepath.Join(dir, StateFile)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var j map[string]json.RawMessage
	if err := json.Unmarshal(data, &j); err != nil {
		t.Fatal(err)
	}
	j["federated"] = json.RawMessage(`{"` + testTD.Name() + `":` + string(j["bundle"]) + `}`)
	data, _ = json.Marshal(j)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	d2 := openDir(t, dir)
	if _, err := newStateStore(d2).load(testTD, ca.now); !errors.Is(err, ErrInconsistentState) {
		t.Fatalf("load of a federated bundle under the local name: %v, want ErrInconsistentState", err)
	}
}
