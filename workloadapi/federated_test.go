package workloadapi_test

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/jwtsvid"
	"writ.dev/writ/ca/x509ca"
)

// foreignCA is the CA of another trust domain: an X.509 authority and a
// JWT key, in a bundle.
type foreignCA struct {
	td     spiffeid.TrustDomain
	cert   *x509.Certificate
	jwtKey jwtsvid.Key
	bundle *spiffebundle.Bundle
}

func newForeignCA(t *testing.T, name string, now time.Time) *foreignCA {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString(name)
	key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509ca.NewSelfSignedCA(now.Add(-time.Minute), td, key, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	jk, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	b := spiffebundle.FromX509Authorities(td, []*x509.Certificate{cert})
	if err := b.AddJWTAuthority("fk1", jk.Public()); err != nil {
		t.Fatal(err)
	}
	return &foreignCA{td: td, cert: cert, jwtKey: jwtsvid.Key{ID: "fk1", Signer: jk}, bundle: b}
}

func (f *foreignCA) jwt(t *testing.T, now time.Time, aud string) string {
	t.Helper()
	tok, _, err := jwtsvid.Sign(now, f.jwtKey, spiffeid.RequireFromPath(f.td, "/client"), []string{aud}, 5*time.Minute, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestFederatedBundles: a caller whose entry federates with a foreign
// trust domain gets that domain's bundle in FetchX509SVID's
// federated_bundles and in both bundle streams (again when it changes,
// and no longer once the entry stops federating), and ValidateJWTSVID
// accepts that domain's JWT-SVIDs and refuses those of a domain the
// caller does not federate with, even if the agent holds its bundle.
func TestFederatedBundles(t *testing.T) {
	e := newEnv(t)
	now := time.Now()
	fa := newForeignCA(t, "federated.test", now)
	other := newForeignCA(t, "unrelated.test", now)
	en := newEntry(t, "/a", selfSelector())
	en.FederatesWith = []spiffeid.TrustDomain{fa.td}
	e.cache.Apply(svidcache.Update{
		Entries:   []*entry.Entry{en},
		Federated: map[spiffeid.TrustDomain]*spiffebundle.Bundle{fa.td: fa.bundle, other.td: other.bundle},
	})
	e.sign(en, time.Hour)

	c, _ := e.raw()
	ctx := withHeader(ctxTimeout(t, 30*time.Second))
	svids, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	sch := recvLoop[workload.X509SVIDResponse](svids)
	s := next(t, sch)
	if s.err != nil || !bytes.Equal(s.msg.GetFederatedBundles()["spiffe://federated.test"], fa.cert.Raw) || len(s.msg.GetFederatedBundles()) != 1 {
		t.Fatalf("FetchX509SVID federated bundles: %v %v", s.msg.GetFederatedBundles(), s.err)
	}
	xs, err := c.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	js, err := c.FetchJWTBundles(ctx, &workload.JWTBundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	xch := recvLoop[workload.X509BundlesResponse](xs)
	jch := recvLoop[workload.JWTBundlesResponse](js)
	x := next(t, xch)
	if x.err != nil || !bytes.Equal(x.msg.GetBundles()["spiffe://federated.test"], fa.cert.Raw) || len(x.msg.GetBundles()) != 2 {
		t.Fatalf("X.509 bundles %v %v", x.msg, x.err)
	}
	j := next(t, jch)
	var jwks struct {
		Keys []map[string]any `json:"keys"`
	}
	if j.err != nil || len(j.msg.GetBundles()) != 2 {
		t.Fatalf("JWT bundles %v %v", j.msg, j.err)
	}
	if err := json.Unmarshal(j.msg.GetBundles()["spiffe://federated.test"], &jwks); err != nil || len(jwks.Keys) != 1 || jwks.Keys[0]["kid"] != "fk1" {
		t.Fatalf("federated JWKS %v %v", jwks, err)
	}

	validate := func(tok string) (string, codes.Code) {
		resp, err := c.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "me", Svid: tok})
		return resp.GetSpiffeId(), status.Code(err)
	}
	if id, code := validate(fa.jwt(t, now, "me")); code != codes.OK || id != "spiffe://federated.test/client" {
		t.Fatalf("federated JWT-SVID: %q %v", id, code)
	}
	if _, code := validate(other.jwt(t, now, "me")); code != codes.InvalidArgument {
		t.Fatalf("JWT-SVID of a trust domain the caller does not federate with: %v, want InvalidArgument", code)
	}
	// A token of federated.test signed with unrelated.test's key, under
	// its kid: keys are looked up only in the subject's bundle.
	forged, _, err := jwtsvid.Sign(now, jwtsvid.Key{ID: "fk1", Signer: other.jwtKey.Signer}, spiffeid.RequireFromPath(fa.td, "/client"), []string{"me"}, time.Minute, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if _, code := validate(forged); code != codes.InvalidArgument {
		t.Fatalf("forged federated JWT-SVID: %v, want InvalidArgument", code)
	}

	// A new authority of federated.test reaches every stream.
	extra := newForeignCA(t, "federated.test", now)
	nb := fa.bundle.Clone()
	nb.AddX509Authority(extra.cert)
	e.cache.Apply(svidcache.Update{Federated: map[spiffeid.TrustDomain]*spiffebundle.Bundle{fa.td: nb}})
	for _, got := range [][]byte{next(t, sch).msg.GetFederatedBundles()["spiffe://federated.test"], next(t, xch).msg.GetBundles()["spiffe://federated.test"]} {
		if certs, err := x509.ParseCertificates(got); err != nil || len(certs) != 2 {
			t.Fatalf("after federated.test changed: %d authorities, %v", len(certs), err)
		}
	}
	if j := next(t, jch); j.err != nil || len(j.msg.GetBundles()) != 2 {
		t.Fatalf("JWT bundles after federated.test changed: %v", j.err)
	}

	// The entry stops federating: the bundle leaves every stream.
	plain := en.Clone()
	plain.FederatesWith = nil
	plain.Revision++
	e.cache.Apply(svidcache.Update{Entries: []*entry.Entry{plain}})
	if s := next(t, sch); len(s.msg.GetFederatedBundles()) != 0 {
		t.Fatalf("federated bundles after the entry stopped federating: %v", s.msg.GetFederatedBundles())
	}
	if x := next(t, xch); len(x.msg.GetBundles()) != 1 {
		t.Fatalf("X.509 bundles after the entry stopped federating: %v", x.msg.GetBundles())
	}
	if j := next(t, jch); len(j.msg.GetBundles()) != 1 {
		t.Fatalf("JWT bundles after the entry stopped federating: %v", j.msg.GetBundles())
	}
	if _, code := validate(fa.jwt(t, now, "me")); code != codes.InvalidArgument {
		t.Fatalf("JWT-SVID of a domain no longer federated with: %v, want InvalidArgument", code)
	}
}
