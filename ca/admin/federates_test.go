package admin_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/datastore"
)

// TestEntryFederatesWith: an entry may federate only with trust domains
// the server holds a bundle of or has a relationship with; the list is
// stored sorted and without duplicates, is set and cleared by update,
// and does not make an otherwise equal entry distinct.
func TestEntryFederatesWith(t *testing.T) {
	e := newEnv(t, envOptions{})
	withBundle := spiffeid.RequireTrustDomainFromString("b.test")
	withRelationship := spiffeid.RequireTrustDomainFromString("c.test")
	if _, err := e.store.UpdateBundle(ctxT(t), withBundle, func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
		return spiffebundle.New(withBundle), nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.store.PutFederation(ctxT(t), &datastore.Federation{TrustDomain: withRelationship, BundleEndpointURL: "https://127.0.0.1:1/", Profile: datastore.ProfileHTTPSWeb, CreatedAt: time.Unix(1, 0), UpdatedAt: time.Unix(1, 0)}); err != nil {
		t.Fatal(err)
	}

	createCode := func(w *adminv1.Entry) (codes.Code, string) {
		t.Helper()
		resp, err := e.entries.BatchCreateEntry(ctxT(t), &adminv1.BatchCreateEntryRequest{Entries: []*adminv1.Entry{w}})
		if err != nil {
			t.Fatalf("BatchCreateEntry: %v", err)
		}
		st := resp.GetResults()[0].GetStatus()
		return codes.Code(st.GetCode()), st.GetMessage()
	}
	for _, c := range []struct {
		name  string
		tds   []string
		words string
	}{
		{"unknown trust domain", []string{"b.test", "d.test"}, `no bundle and no federation relationship for trust domain "d.test"`},
		{"local trust domain", []string{"example.org"}, "own trust domain"},
		{"uppercase", []string{"B.test"}, "federates_with[0]"},
		{"with scheme", []string{"spiffe://b.test"}, "federates_with[0]"},
		{"empty", []string{""}, "federates_with[0]"},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := validEntry(1)
			w.FederatesWith = c.tds
			code, msg := createCode(w)
			if code != codes.InvalidArgument || !strings.Contains(msg, c.words) {
				t.Fatalf("create federating with %q: %v %q, want InvalidArgument with %q", c.tds, code, msg, c.words)
			}
		})
	}

	w := validEntry(1)
	w.FederatesWith = []string{"c.test", "b.test", "c.test"}
	got := e.create(t, w)
	if want := []string{"b.test", "c.test"}; !slices.Equal(got.GetFederatesWith(), want) {
		t.Fatalf("created federates_with %q, want %q", got.GetFederatesWith(), want)
	}
	fetched, err := e.entries.GetEntry(ctxT(t), &adminv1.GetEntryRequest{Id: got.GetId()})
	if err != nil || !slices.Equal(fetched.GetFederatesWith(), got.GetFederatesWith()) {
		t.Fatalf("GetEntry: %v %q", err, fetched.GetFederatesWith())
	}

	// The duplicate rule ignores federates_with, as it ignores DNS names.
	dup := validEntry(1)
	if code, _ := createCode(dup); code != codes.AlreadyExists {
		t.Fatalf("entry differing only in federates_with: %v, want AlreadyExists", code)
	}

	update := func(tds ...string) (*adminv1.Entry, error) {
		return e.entries.UpdateEntry(ctxT(t), &adminv1.UpdateEntryRequest{
			Entry:      &adminv1.Entry{Id: got.GetId(), FederatesWith: tds},
			UpdateMask: []string{"federates_with"},
		})
	}
	if _, err := update("d.test"); status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "d.test") {
		t.Fatalf("update to an unknown trust domain: %v", err)
	}
	upd, err := update("b.test")
	if err != nil || !slices.Equal(upd.GetFederatesWith(), []string{"b.test"}) {
		t.Fatalf("update to b.test: %v %q", err, upd.GetFederatesWith())
	}
	upd, err = update()
	if err != nil || len(upd.GetFederatesWith()) != 0 {
		t.Fatalf("update to none: %v %q", err, upd.GetFederatesWith())
	}
}
