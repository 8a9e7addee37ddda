package datastoretest

import (
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

func testFederations(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	ctx := t.Context()
	list, err := s.ListFederations(ctx)
	requireNoError(t, "ListFederations", err)
	if len(list) != 0 {
		t.Fatalf("new store lists federations: %+v", list)
	}
	partner := &datastore.Federation{TrustDomain: spiffeid.RequireTrustDomainFromString("partner.test"), BundleEndpointURL: "https://bundle.partner.test:8443/",
		Profile: datastore.ProfileHTTPSSPIFFE, EndpointSPIFFEID: spiffeid.RequireFromString("spiffe://partner.test/writ/server"), CreatedAt: t0, UpdatedAt: t0}
	web := &datastore.Federation{TrustDomain: spiffeid.RequireTrustDomainFromString("a-web.test"), BundleEndpointURL: "https://a-web.test/bundle",
		Profile: datastore.ProfileHTTPSWeb, CreatedAt: t0, UpdatedAt: t0.Add(time.Minute)}
	requireNoError(t, "PutFederation", s.PutFederation(ctx, partner))
	requireNoError(t, "PutFederation", s.PutFederation(ctx, web))
	requireFederations(t, s, "listed in trust domain order", web, partner)

	// Put replaces.
	moved := *partner
	moved.BundleEndpointURL = "https://new.partner.test/"
	moved.UpdatedAt = t0.Add(time.Hour)
	requireNoError(t, "PutFederation (replace)", s.PutFederation(ctx, &moved))
	requireFederations(t, s, "after a replace", web, &moved)

	// Invalid relationships are refused and change nothing.
	for name, bad := range map[string]*datastore.Federation{
		"no trust domain":          {BundleEndpointURL: "https://x.test/", Profile: datastore.ProfileHTTPSWeb},
		"unknown profile":          {TrustDomain: web.TrustDomain, BundleEndpointURL: "https://x.test/", Profile: "http"},
		"https_spiffe without ID":  {TrustDomain: web.TrustDomain, BundleEndpointURL: "https://x.test/", Profile: datastore.ProfileHTTPSSPIFFE},
		"plain http endpoint":      {TrustDomain: web.TrustDomain, BundleEndpointURL: "http://x.test/", Profile: datastore.ProfileHTTPSWeb},
		"user information in URL":  {TrustDomain: web.TrustDomain, BundleEndpointURL: "https://u:p@x.test/", Profile: datastore.ProfileHTTPSWeb},
		"https_web with an ID set": {TrustDomain: web.TrustDomain, BundleEndpointURL: "https://x.test/", Profile: datastore.ProfileHTTPSWeb, EndpointSPIFFEID: partner.EndpointSPIFFEID},
	} {
		requireErrorIs(t, "PutFederation ("+name+")", s.PutFederation(ctx, bad), entry.ErrInvalid)
	}
	requireFederations(t, s, "after refused puts", web, &moved)

	requireNoError(t, "DeleteFederation", s.DeleteFederation(ctx, web.TrustDomain))
	requireErrorIs(t, "DeleteFederation (again)", s.DeleteFederation(ctx, web.TrustDomain), datastore.ErrNotFound)
	requireFederations(t, s, "after a delete", &moved)
}

func requireFederations(t *testing.T, s datastore.Store, what string, want ...*datastore.Federation) {
	t.Helper()
	got, err := s.ListFederations(t.Context())
	requireNoError(t, "ListFederations", err)
	if len(got) != len(want) {
		t.Fatalf("%s: %d federations, want %d", what, len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.TrustDomain != w.TrustDomain || g.BundleEndpointURL != w.BundleEndpointURL || g.Profile != w.Profile || g.EndpointSPIFFEID != w.EndpointSPIFFEID ||
			!g.CreatedAt.Equal(w.CreatedAt) || !g.UpdatedAt.Equal(w.UpdatedAt) {
			t.Fatalf("%s: federation %d is %+v, want %+v", what, i, g, w)
		}
	}
}
