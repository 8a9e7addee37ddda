package agent_test

import (
	"encoding/hex"
	"fmt"
	"slices"
	"testing"

	"writ.dev/writ/agent/internal/fakenode"
	"writ.dev/writ/agent/svidcache"
	nodev1 "writ.dev/writ/ca/api/node/v1"
)

// A taint re-signs at once (the fake clock does not move), in one batch,
// every X.509-SVID the tainted CA signed, then renews the agent SVID; it
// drops the JWT-SVIDs of a tainted key.
func TestTaintResignsAtOnceInOneBatch(t *testing.T) {
	e := newEnv(t, fakenode.Options{})
	var es []*nodev1.Entry
	for i := range 30 {
		es = append(es, e.srv.Entry(fmt.Sprintf("/w%d", i), "unix:uid:1000"))
	}
	e.srv.SetEntries(es...)
	r := e.start(e.attestConfig())
	e.ready(r)
	c := r.a.Cache()
	sel := mustSels(t, "unix:uid:1000")
	eventually(t, "every SVID signed", func() bool { return len(c.X509SVIDs(sel)) == len(es) })
	jwt1, err := c.FetchJWTSVID(t.Context(), es[0].Id, []string{"aud"})
	if err != nil {
		t.Fatal(err)
	}

	eventually(t, "the first bundle acknowledged", func() bool { return e.srv.Acked() == e.srv.BundleSequence() })
	oldCA, oldKid := e.srv.RotateKeys()
	newCA := hex.EncodeToString(e.srv.CA().SubjectKeyId)
	// The agent acknowledges the new bundle once its cache has it.
	eventually(t, "the new bundle acknowledged", func() bool { return e.srv.Acked() == e.srv.BundleSequence() })
	if b := c.Bundle(); b == nil || len(b.X509Authorities()) != 2 {
		t.Fatal("bundle acknowledged before the cache had it")
	}
	before := e.srv.Stats()
	if len(before.BatchSizes) == 0 || before.Renewals != 0 {
		t.Fatalf("stats before the taint: %+v", before)
	}
	// A rotation alone re-signs nothing.
	for _, s := range c.X509SVIDs(sel) {
		if s.AuthorityID != oldCA {
			t.Fatalf("entry %s re-signed by the rotation alone", s.EntryID)
		}
	}

	e.srv.Taint([]string{oldCA}, []string{oldKid})
	eventually(t, "every SVID re-signed by the new CA", func() bool {
		svids := c.X509SVIDs(sel)
		return len(svids) == len(es) && !slices.ContainsFunc(svids, func(s *svidcache.X509SVID) bool { return s.AuthorityID != newCA })
	})
	eventually(t, "the agent SVID renewed", func() bool { return e.srv.Stats().Renewals == 1 })
	after := e.srv.Stats()
	if got := after.BatchSizes[len(before.BatchSizes):]; !slices.Equal(got, []int{len(es)}) {
		t.Fatalf("batches after the taint: %v, want one of %d", got, len(es))
	}
	jwt2, err := c.FetchJWTSVID(t.Context(), es[0].Id, []string{"aud"})
	if err != nil {
		t.Fatal(err)
	}
	if jwt1.KeyID != oldKid || jwt2.KeyID == oldKid || jwt2 == jwt1 {
		t.Fatalf("JWT-SVID kids: before %q, after %q (tainted %q)", jwt1.KeyID, jwt2.KeyID, oldKid)
	}
	// The agent reconnects with its new SVID and keeps serving.
	eventually(t, "a new Sync stream", func() bool { return e.srv.Stats().Syncs > after.Syncs })
	if !r.a.Healthy() {
		t.Fatal("agent unhealthy after the taint")
	}
	if n := e.srv.Stats().Renewals; n != 1 {
		t.Fatalf("%d agent renewals, want 1", n)
	}

	// A second rotation and taint: the renewed agent SVID is renewed
	// again, the workload SVIDs re-signed again.
	second, _ := e.srv.RotateKeys()
	third := hex.EncodeToString(e.srv.CA().SubjectKeyId)
	if second != newCA {
		t.Fatalf("RotateKeys replaced %s, want %s", second, newCA)
	}
	eventually(t, "the third bundle acknowledged", func() bool { return e.srv.Acked() == e.srv.BundleSequence() })
	e.srv.Taint([]string{oldCA, newCA}, nil)
	eventually(t, "every SVID re-signed by the third CA", func() bool {
		svids := c.X509SVIDs(sel)
		return len(svids) == len(es) && !slices.ContainsFunc(svids, func(s *svidcache.X509SVID) bool { return s.AuthorityID != third })
	})
	eventually(t, "the agent SVID renewed again", func() bool { return e.srv.Stats().Renewals == 2 })
}
