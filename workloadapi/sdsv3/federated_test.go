package sdsv3_test

import (
	"crypto/x509"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/workloadapi/sdsv3"
)

func foreignCert(t *testing.T, td spiffeid.TrustDomain) *x509.Certificate {
	t.Helper()
	key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509ca.NewSelfSignedCA(time.Now().Add(-time.Minute), td, key, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// TestFederatedValidationContexts: a caller whose entry federates with a
// foreign trust domain gets its bundle under "spiffe://<td>" and in
// "ALL", each trust domain under its own name; a change of the foreign
// bundle is pushed; a foreign bundle the caller does not federate with
// is not served.
func TestFederatedValidationContexts(t *testing.T) {
	e := newEnv(t, sdsv3.Config{})
	fed := spiffeid.RequireTrustDomainFromString("federated.test")
	unrelated := spiffeid.RequireTrustDomainFromString("unrelated.test")
	fedCert := foreignCert(t, fed)
	en := e.add("/svc/a")
	upd := en.Clone()
	upd.FederatesWith = []spiffeid.TrustDomain{fed}
	upd.Revision++
	e.cache.Apply(svidcache.Update{
		Entries: []*entry.Entry{upd},
		Federated: map[spiffeid.TrustDomain]*spiffebundle.Bundle{
			fed:       spiffebundle.FromX509Authorities(fed, []*x509.Certificate{fedCert}),
			unrelated: spiffebundle.FromX509Authorities(unrelated, []*x509.Certificate{foreignCert(t, unrelated)}),
		},
	})
	e.sign(upd)

	names := []string{"ALL", "spiffe://federated.test", "spiffe://unrelated.test"}
	s := e.stream(ctxTimeout(t))
	s.send(&discoveryv3.DiscoveryRequest{Node: envoyNode(40), ResourceNames: names})
	r1 := s.next()
	got := secrets(t, r1)
	if len(got) != 2 || got["spiffe://unrelated.test"] != nil {
		t.Fatalf("got %d secrets (%v), want ALL and federated.test only", len(got), got)
	}
	all := spiffeValidator(t, got["ALL"])
	if len(all.TrustDomains) != 2 || all.TrustDomains[0].Name != "example.org" || all.TrustDomains[1].Name != "federated.test" {
		t.Fatalf("ALL trust domains %v", all.TrustDomains)
	}
	if c := parsePEMCerts(t, all.TrustDomains[1].GetTrustBundle().GetInlineBytes()); len(c) != 1 || !c[0].Equal(fedCert) {
		t.Fatal("federated.test's bundle in ALL is not its CA")
	}
	one := spiffeValidator(t, got["spiffe://federated.test"])
	if len(one.TrustDomains) != 1 || one.TrustDomains[0].Name != "federated.test" {
		t.Fatalf("spiffe://federated.test trust domains %v", one.TrustDomains)
	}
	s.ack(r1, names...)

	// A new authority of federated.test is pushed.
	start := time.Now()
	e.cache.Apply(svidcache.Update{Federated: map[spiffeid.TrustDomain]*spiffebundle.Bundle{
		fed: spiffebundle.FromX509Authorities(fed, []*x509.Certificate{fedCert, foreignCert(t, fed)}),
	}})
	r2 := s.next()
	checkPushTime(t, "federated bundle change", time.Since(start))
	all = spiffeValidator(t, secrets(t, r2)["ALL"])
	if c := parsePEMCerts(t, all.TrustDomains[1].GetTrustBundle().GetInlineBytes()); len(c) != 2 {
		t.Fatalf("federated.test in ALL after the change: %d authorities, want 2", len(c))
	}

	// FetchSecrets serves the same.
	resp, err := e.client().FetchSecrets(ctxTimeout(t), &discoveryv3.DiscoveryRequest{Node: envoyNode(40), ResourceNames: []string{"spiffe://federated.test", "spiffe://unrelated.test"}})
	if err != nil || len(resp.GetResources()) != 1 {
		t.Fatalf("FetchSecrets: %v, %d secrets, want federated.test only", err, len(resp.GetResources()))
	}
}

// TestAllBundlesNameMayBeTheBundleName: an agent whose all-bundles name
// is the bundle name ("ROOTCA", as Istio's SPIRE integration configures
// it, with no bundle name of its own) serves every trust domain's
// bundle under it to Envoys with the SPIFFE validator, so that
// federated peers verify; an Envoy without the validator still gets its
// own trust domain's bundle there.
func TestAllBundlesNameMayBeTheBundleName(t *testing.T) {
	for _, cfg := range []sdsv3.Config{
		{DefaultAllBundlesName: "ROOTCA"},
		{DefaultBundleName: "ROOTCA", DefaultAllBundlesName: "ROOTCA"},
	} {
		e := newEnv(t, cfg)
		fed := spiffeid.RequireTrustDomainFromString("federated.test")
		en := e.add("/svc/a")
		upd := en.Clone()
		upd.FederatesWith = []spiffeid.TrustDomain{fed}
		upd.Revision++
		e.cache.Apply(svidcache.Update{
			Entries:   []*entry.Entry{upd},
			Federated: map[spiffeid.TrustDomain]*spiffebundle.Bundle{fed: spiffebundle.FromX509Authorities(fed, []*x509.Certificate{foreignCert(t, fed)})},
		})
		e.sign(upd)

		resp, err := e.client().FetchSecrets(ctxTimeout(t), &discoveryv3.DiscoveryRequest{Node: envoyNode(40), ResourceNames: []string{"ROOTCA"}})
		if err != nil {
			t.Fatal(err)
		}
		root := secrets(t, resp)["ROOTCA"]
		if root == nil {
			t.Fatalf("bundle name %q, all-bundles name %q: ROOTCA not served", cfg.DefaultBundleName, cfg.DefaultAllBundlesName)
		}
		var tds []string
		for _, d := range spiffeValidator(t, root).TrustDomains {
			tds = append(tds, d.Name)
		}
		if len(tds) != 2 || tds[0] != "example.org" || tds[1] != "federated.test" {
			t.Fatalf("bundle name %q, all-bundles name %q: ROOTCA holds trust domains %v, want example.org and federated.test", cfg.DefaultBundleName, cfg.DefaultAllBundlesName, tds)
		}

		resp, err = e.client().FetchSecrets(ctxTimeout(t), &discoveryv3.DiscoveryRequest{Node: envoyNode(17), ResourceNames: []string{"ROOTCA"}})
		if err != nil {
			t.Fatal(err)
		}
		root = secrets(t, resp)["ROOTCA"]
		if c := parsePEMCerts(t, root.GetValidationContext().GetTrustedCa().GetInlineBytes()); len(c) != 1 || !c[0].Equal(e.iss.Cert) {
			t.Fatalf("bundle name %q, all-bundles name %q: ROOTCA for Envoy 1.17 is not the local CA as trusted_ca", cfg.DefaultBundleName, cfg.DefaultAllBundlesName)
		}
	}
}
