package svidcache_test

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/entry"
)

func tdNames(bs []*spiffebundle.Bundle) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b.TrustDomain().Name()
	}
	return out
}

func signalled(s *svidcache.Subscription) bool {
	select {
	case <-s.Changed():
		return true
	default:
		return false
	}
}

// TestFederatedBundles: a selector set sees the foreign bundles of the
// trust domains its entries federate with, and only those the cache
// holds; subscribers are signalled when such a bundle or an entry's set
// changes; a full update replaces the set; a bundle under the local trust
// domain or another name is never taken.
func TestFederatedBundles(t *testing.T) {
	c := newCache(t, fakeclock.New(t0), nil)
	b := spiffeid.RequireTrustDomainFromString("b.test")
	d := spiffeid.RequireTrustDomainFromString("d.test")
	x := spiffeid.RequireTrustDomainFromString("x.test")
	e1 := newEntry(t, "/one", "unix:uid:1")
	e1.FederatesWith = []spiffeid.TrustDomain{b, x}
	e2 := newEntry(t, "/two", "unix:uid:2")
	e2.FederatesWith = []spiffeid.TrustDomain{d}
	sub := c.Subscribe(sels(t, "unix:uid:1"))
	defer sub.Close()
	c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{e1, e2}, FederatedFull: true, Federated: map[spiffeid.TrustDomain]*spiffebundle.Bundle{
		b:  spiffebundle.New(b),
		d:  spiffebundle.New(d),
		td: spiffebundle.New(td),                                              // the local trust domain: ignored
		x:  spiffebundle.New(spiffeid.RequireTrustDomainFromString("y.test")), // under another name: ignored
	}})
	signalled(sub)
	if got := tdNames(sub.State().Federated); len(got) != 1 || got[0] != "b.test" {
		t.Fatalf("uid 1 sees %v, want [b.test]", got)
	}
	if got := tdNames(c.FederatedBundles(sels(t, "unix:uid:1", "unix:uid:2"))); len(got) != 2 || got[0] != "b.test" || got[1] != "d.test" {
		t.Fatalf("uid 1 and 2 see %v, want [b.test d.test]", got)
	}

	// A change of d.test concerns uid 2 only, but subscribers re-read.
	nb := spiffebundle.New(b)
	nb.SetSequenceNumber(2)
	c.Apply(svidcache.Update{Federated: map[spiffeid.TrustDomain]*spiffebundle.Bundle{b: nb}})
	if !signalled(sub) {
		t.Fatal("no signal after b.test changed")
	}
	if got := sub.State().Federated; len(got) != 1 || got[0] != nb {
		t.Fatal("the new bundle of b.test is not served")
	}
	// An equal bundle is no change.
	c.Apply(svidcache.Update{Federated: map[spiffeid.TrustDomain]*spiffebundle.Bundle{b: nb.Clone()}})
	if signalled(sub) {
		t.Fatal("signal after an equal bundle")
	}

	// The entry moves to d.test.
	moved := e1.Clone()
	moved.FederatesWith = []spiffeid.TrustDomain{d}
	moved.Revision++
	c.Apply(svidcache.Update{Entries: []*entry.Entry{moved}})
	if !signalled(sub) {
		t.Fatal("no signal after the entry's federated trust domains changed")
	}
	if got := tdNames(sub.State().Federated); len(got) != 1 || got[0] != "d.test" {
		t.Fatalf("after the move uid 1 sees %v", got)
	}

	// Removed, then a full update without it.
	c.Apply(svidcache.Update{RemovedFederated: []spiffeid.TrustDomain{d}})
	if !signalled(sub) || len(sub.State().Federated) != 0 {
		t.Fatal("d.test still served after its removal")
	}
	c.Apply(svidcache.Update{Federated: map[spiffeid.TrustDomain]*spiffebundle.Bundle{d: spiffebundle.New(d)}})
	c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{moved, e2}, FederatedFull: true})
	if got := c.AllFederatedBundles(); len(got) != 0 {
		t.Fatalf("a full update without foreign bundles left %d", len(got))
	}
}

// TestFederatedTemplate: instances of a template entry federate as the
// template does, and a change of the template's set reaches them.
func TestFederatedTemplate(t *testing.T) {
	c := newCache(t, fakeclock.New(t0), nil)
	b := spiffeid.RequireTrustDomainFromString("b.test")
	tmpl := newEntry(t, "/user", "unix:uid:1")
	tmpl.Template = "spiffe://example.org/user/{{unix.uid}}"
	tmpl.FederatesWith = []spiffeid.TrustDomain{b}
	c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{tmpl}, Federated: map[spiffeid.TrustDomain]*spiffebundle.Bundle{b: spiffebundle.New(b)}})
	if got := tdNames(c.FederatedBundles(sels(t, "unix:uid:1"))); len(got) != 1 {
		t.Fatalf("template instance sees %v, want [b.test]", got)
	}
	plain := tmpl.Clone()
	plain.FederatesWith = nil
	plain.Revision++
	c.Apply(svidcache.Update{Entries: []*entry.Entry{plain}})
	if got := c.FederatedBundles(sels(t, "unix:uid:1")); len(got) != 0 {
		t.Fatalf("template instance still sees %v", tdNames(got))
	}
}
