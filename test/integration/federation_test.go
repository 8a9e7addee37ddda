package integration_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestIntegrationFederationBundleExchange federates two real servers of
// trust domains a.test and b.test over https_spiffe: each fetches the
// other's bundle from its bundle endpoint, a CA change in b.test reaches
// a.test at the next refresh, and a relationship whose endpoint
// authenticates as another SPIFFE ID is refused while the last good
// bundle stays.
func TestIntegrationFederationBundleExchange(t *testing.T) {
	dir := shortTempDir(t)
	a := startServer(t, filepath.Join(dir, "a"), "--trust-domain", "a.test", "--federation-bind-address", "127.0.0.1:0")
	b := startServer(t, filepath.Join(dir, "b"), "--trust-domain", "b.test", "--federation-bind-address", "127.0.0.1:0")
	bundleFile := func(p *serverProc, name string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(p.admin("bundle", "show", "--format", "spiffe")), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	aBundle, bBundle := bundleFile(a, "a.json"), bundleFile(b, "b.json")
	aURL := "https://" + logField(t, a, "federation_address") + "/"
	bURL := "https://" + logField(t, b, "federation_address") + "/"

	var created jsonFederationOut
	a.adminJSON(&created, "federation", "create", "--trust-domain", "b.test", "--bundle-endpoint-url", bURL, "--profile", "https_spiffe", "--trust-bundle", bBundle)
	if created.EndpointSPIFFEID != "spiffe://b.test/writ/server" || created.Profile != "https_spiffe" {
		t.Fatalf("created %+v", created)
	}
	b.admin("federation", "create", "--trust-domain", "a.test", "--bundle-endpoint-url", aURL, "--profile", "https_spiffe", "--trust-bundle", aBundle)

	// Each server fetches the other's bundle by itself.
	waitFederated(t, a, "b.test", func(f jsonFederationOut) bool { return f.Status != nil && f.Status.LastSuccess != "" })
	waitFederated(t, b, "a.test", func(f jsonFederationOut) bool { return f.Status != nil && f.Status.LastSuccess != "" })

	// A new CA of b.test reaches a.test at the next refresh.
	before := federatedX509(t, a, "b.test")
	b.admin("ca", "x509", "prepare")
	var refreshed jsonFederationOut
	a.adminJSON(&refreshed, "federation", "refresh", "--trust-domain", "b.test")
	if after := federatedX509(t, a, "b.test"); after != before+1 {
		t.Fatalf("b.test's X.509 authorities at a.test: %d, then %d after b.test prepared a CA", before, after)
	}

	// An endpoint that authenticates as another ID is refused; the last
	// good bundle stays.
	kept := federatedX509(t, a, "b.test")
	a.admin("federation", "update", "--trust-domain", "b.test", "--bundle-endpoint-url", bURL, "--profile", "https_spiffe", "--endpoint-spiffe-id", "spiffe://b.test/someone-else")
	_, errOut, code := runWrit(t, nil, "federation", "refresh", "--trust-domain", "b.test", "--admin-socket", a.socket)
	if code == 0 || !strings.Contains(errOut, "not refreshed") {
		t.Fatalf("refresh against an endpoint with the wrong ID: exit %d %q", code, errOut)
	}
	if got := federatedX509(t, a, "b.test"); got != kept {
		t.Fatalf("the refused fetch changed the stored bundle: %d authorities, want %d", got, kept)
	}
	var shown jsonFederationOut
	a.adminJSON(&shown, "federation", "show", "--trust-domain", "b.test")
	if shown.Status == nil || shown.Status.LastError == "" {
		t.Fatalf("show after a refused fetch: %+v", shown)
	}

	// Deleting the relationship keeps the bundle until bundle delete.
	a.admin("federation", "delete", "--trust-domain", "b.test")
	if got := federatedX509(t, a, "b.test"); got != kept {
		t.Fatal("federation delete removed the bundle")
	}
	a.admin("bundle", "delete", "--trust-domain", "b.test")
	var list []map[string]any
	a.adminJSON(&list, "bundle", "list")
	if len(list) != 0 {
		t.Fatalf("bundles after delete: %v", list)
	}
}

type jsonFederationOut struct {
	TrustDomain      string `json:"trust_domain"`
	Profile          string `json:"profile"`
	EndpointSPIFFEID string `json:"endpoint_spiffe_id"`
	Status           *struct {
		LastSuccess    string `json:"last_success"`
		LastError      string `json:"last_error"`
		BundleSequence uint64 `json:"bundle_sequence"`
	} `json:"status"`
}

func waitFederated(t *testing.T, p *serverProc, td string, ok func(jsonFederationOut) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var f jsonFederationOut
	for time.Now().Before(deadline) {
		p.adminJSON(&f, "federation", "show", "--trust-domain", td)
		if ok(f) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("federation with %s never got there: %+v", td, f)
}

// federatedX509 returns the number of X.509 authorities p holds for td.
func federatedX509(t *testing.T, p *serverProc, td string) int {
	t.Helper()
	var list []struct {
		TrustDomain string `json:"trust_domain"`
		X509        int    `json:"x509_authorities"`
	}
	out := p.admin("bundle", "list", "--output", "json")
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatal(err)
	}
	for _, b := range list {
		if b.TrustDomain == td {
			return b.X509
		}
	}
	t.Fatalf("%s holds no bundle of %s", p.dataDir, td)
	return 0
}
