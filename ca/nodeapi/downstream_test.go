package nodeapi_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/ca/nodeapi"
	"writ.dev/writ/ca/x509ca"
)

// caCSR makes a CSR for key naming the URIs and DNS names given.
func caCSR(t *testing.T, key crypto.Signer, uris []string, dns ...string) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{DNSNames: dns}
	for _, u := range uris {
		p, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, p)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func wantStatus(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("got %v (%v), want %v", got, err, want)
	}
}

func TestMintDownstreamX509CARefusals(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	e.attest(agentB)
	down := e.createEntry("spiffe://example.org/regional", agentA, func(en *entry.Entry) { en.Downstream = true })
	plain := e.createEntry("spiffe://example.org/plain", agentA, nil)
	others := e.createEntry("spiffe://example.org/other", agentB, func(en *entry.Entry) { en.Downstream = true })
	key := newKey(t)
	good := caCSR(t, key, []string{"spiffe://example.org"})

	tests := []struct {
		name string
		req  *nodev1.MintDownstreamX509CARequest
		want codes.Code
	}{
		{name: "not downstream", req: &nodev1.MintDownstreamX509CARequest{EntryId: plain.ID, Csr: good}, want: codes.PermissionDenied},
		{name: "another agent's entry", req: &nodev1.MintDownstreamX509CARequest{EntryId: others.ID, Csr: good}, want: codes.PermissionDenied},
		{name: "no such entry", req: &nodev1.MintDownstreamX509CARequest{EntryId: entry.NewID(), Csr: good}, want: codes.PermissionDenied},
		{name: "other trust domain", req: &nodev1.MintDownstreamX509CARequest{EntryId: down.ID, Csr: caCSR(t, key, []string{"spiffe://other.org"})}, want: codes.InvalidArgument},
		{name: "workload ID", req: &nodev1.MintDownstreamX509CARequest{EntryId: down.ID, Csr: caCSR(t, key, []string{"spiffe://example.org/admin"})}, want: codes.InvalidArgument},
		{name: "two URIs", req: &nodev1.MintDownstreamX509CARequest{EntryId: down.ID, Csr: caCSR(t, key, []string{"spiffe://example.org", "spiffe://other.org"})}, want: codes.InvalidArgument},
		{name: "DNS name", req: &nodev1.MintDownstreamX509CARequest{EntryId: down.ID, Csr: caCSR(t, key, nil, "ca.example.org")}, want: codes.InvalidArgument},
		{name: "junk CSR", req: &nodev1.MintDownstreamX509CARequest{EntryId: down.ID, Csr: []byte("junk")}, want: codes.InvalidArgument},
		{name: "negative TTL", req: &nodev1.MintDownstreamX509CARequest{EntryId: down.ID, Csr: good, PreferredTtl: -1}, want: codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := a.client.MintDownstreamX509CA(ctxT(t), tt.req)
			wantStatus(t, err, tt.want)
		})
	}
}

func TestMintDownstreamX509CA(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	limited := e.createEntry("spiffe://example.org/regional", agentA, func(en *entry.Entry) {
		en.Downstream = true
		en.X509SVIDTTL = 2 * time.Hour
	})
	unlimited := e.createEntry("spiffe://example.org/regional2", agentA, func(en *entry.Entry) { en.Downstream = true })
	parent := e.km.Active().X509.Cert
	now := e.clock.Now()

	tests := []struct {
		name      string
		entry     *entry.Entry
		preferred time.Duration
		uris      []string
		// wantNotAfter is the expected NotAfter.
		wantNotAfter time.Time
	}{
		{name: "shorter than the limit", entry: limited, preferred: 30 * time.Minute, uris: []string{"spiffe://example.org"}, wantNotAfter: now.Add(30 * time.Minute)},
		{name: "longer: cut to the entry's TTL", entry: limited, preferred: 10 * time.Hour, wantNotAfter: now.Add(2 * time.Hour)},
		{name: "none: the entry's TTL", entry: limited, wantNotAfter: now.Add(2 * time.Hour)},
		{name: "longer than the signing CA: cut to it", entry: unlimited, preferred: 1000 * time.Hour, wantNotAfter: parent.NotAfter},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := newKey(t)
			resp, err := a.client.MintDownstreamX509CA(ctxT(t), &nodev1.MintDownstreamX509CARequest{
				EntryId: tt.entry.ID, Csr: caCSR(t, key, tt.uris), PreferredTtl: int64(tt.preferred / time.Second),
			})
			if err != nil {
				t.Fatal(err)
			}
			ca, err := x509.ParseCertificate(resp.CaChain[0])
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0:
				t.Fatal("not a signing CA")
			case len(ca.URIs) != 1 || ca.URIs[0].String() != "spiffe://example.org":
				t.Fatalf("URIs %v", ca.URIs)
			case !ca.NotAfter.Equal(tt.wantNotAfter.Truncate(time.Second)):
				t.Fatalf("NotAfter %s, want %s", ca.NotAfter, tt.wantNotAfter)
			case ca.NotAfter.After(parent.NotAfter):
				t.Fatal("outlives the signing CA")
			case ca.MaxPathLen >= 0 && !(ca.MaxPathLen == 0 && !ca.MaxPathLenZero):
				t.Fatalf("path length %d leaves no room below", ca.MaxPathLen)
			}
			if len(resp.X509Authorities) == 0 {
				t.Fatal("no X.509 authorities")
			}
			// An SVID the downstream CA signs verifies with go-spiffe
			// against the trust domain's authorities alone.
			var roots []*x509.Certificate
			for _, r := range resp.X509Authorities {
				c, err := x509.ParseCertificate(r)
				if err != nil {
					t.Fatal(err)
				}
				roots = append(roots, c)
			}
			var chain []*x509.Certificate
			for _, der := range resp.CaChain {
				c, err := x509.ParseCertificate(der)
				if err != nil {
					t.Fatal(err)
				}
				chain = append(chain, c)
			}
			iss := &x509ca.Issuer{Cert: chain[0], Signer: key, Chain: chain}
			leafKey := newKey(t)
			leaf, err := x509ca.SignX509SVID(e.clock.Now(), iss, x509ca.SVIDParams{ID: spiffeid.RequireFromString("spiffe://example.org/below"), TTL: time.Hour, PublicKey: leafKey.Public()})
			if err != nil {
				t.Fatal(err)
			}
			svidChain, err := x509svid.ParseRaw(concat(iss.SVIDChain(leaf)), mustPKCS8(t, leafKey))
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := x509svid.Verify(svidChain.Certificates, x509bundle.FromX509Authorities(td, roots)); err != nil {
				t.Fatalf("go-spiffe refuses an SVID of the downstream CA: %v", err)
			}
		})
	}
}

func concat(ders [][]byte) []byte {
	var out []byte
	for _, d := range ders {
		out = append(out, d...)
	}
	return out
}

func mustPKCS8(t *testing.T, k crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestPublishDownstreamJWTAuthority(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	down := e.createEntry("spiffe://example.org/regional", agentA, func(en *entry.Entry) {
		en.Downstream = true
		en.X509SVIDTTL = 2 * time.Hour
	})
	plain := e.createEntry("spiffe://example.org/plain", agentA, nil)
	pub, err := x509.MarshalPKIXPublicKey(newKey(t).Public())
	if err != nil {
		t.Fatal(err)
	}
	now := e.clock.Now()
	ownKID := e.km.Active().JWT.ID

	refusals := []struct {
		name string
		req  *nodev1.PublishDownstreamJWTAuthorityRequest
		want codes.Code
	}{
		{name: "not downstream", req: &nodev1.PublishDownstreamJWTAuthorityRequest{EntryId: plain.ID, KeyId: "k1", PublicKey: pub, ExpiresAt: now.Add(time.Hour).Unix()}, want: codes.PermissionDenied},
		{name: "bad key ID", req: &nodev1.PublishDownstreamJWTAuthorityRequest{EntryId: down.ID, KeyId: "a/b", PublicKey: pub, ExpiresAt: now.Add(time.Hour).Unix()}, want: codes.InvalidArgument},
		{name: "junk key", req: &nodev1.PublishDownstreamJWTAuthorityRequest{EntryId: down.ID, KeyId: "k1", PublicKey: []byte("junk"), ExpiresAt: now.Add(time.Hour).Unix()}, want: codes.InvalidArgument},
		{name: "expired", req: &nodev1.PublishDownstreamJWTAuthorityRequest{EntryId: down.ID, KeyId: "k1", PublicKey: pub, ExpiresAt: now.Add(-time.Second).Unix()}, want: codes.InvalidArgument},
		{name: "the server's own key ID", req: &nodev1.PublishDownstreamJWTAuthorityRequest{EntryId: down.ID, KeyId: ownKID, PublicKey: pub, ExpiresAt: now.Add(time.Hour).Unix()}, want: codes.AlreadyExists},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			_, err := a.client.PublishDownstreamJWTAuthority(ctxT(t), tt.req)
			wantStatus(t, err, tt.want)
		})
	}
	if _, ok := e.bundle().FindJWTAuthority(ownKID); !ok {
		t.Fatal("the server's own JWT key left the bundle")
	}

	resp, err := a.client.PublishDownstreamJWTAuthority(ctxT(t), &nodev1.PublishDownstreamJWTAuthorityRequest{
		EntryId: down.ID, KeyId: "child-key", PublicKey: pub, ExpiresAt: now.Add(48 * time.Hour).Unix(),
	})
	if err != nil {
		t.Fatal(err)
	}
	// A later expiry is cut to the entry's TTL.
	if want := now.Add(2 * time.Hour).Unix(); resp.ExpiresAt != want {
		t.Fatalf("expires at %d, want %d", resp.ExpiresAt, want)
	}
	if _, ok := e.bundle().FindJWTAuthority("child-key"); !ok {
		t.Fatal("the downstream key is not in the bundle")
	}
	keys, err := e.store.ListCAKeys(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	var rec *datastore.CAKey
	for _, k := range keys {
		if k.ID == "child-key" {
			rec = k
		}
	}
	if rec == nil || rec.ServerID != nodeapi.DownstreamOwnerPrefix+down.ID || rec.Kind != datastore.CAKeyJWT {
		t.Fatalf("record %+v", rec)
	}

	// Once expired, the key manager drops it from the bundle.
	ctx, cancel := context.WithCancel(ctxT(t))
	done := make(chan error, 1)
	go func() { done <- e.km.Manager.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	if err := e.clock.WaitForTimerWithin(ctx, 2*time.Hour); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(2*time.Hour + time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, ok := e.bundle().FindJWTAuthority("child-key"); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("expired downstream key still in the bundle")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, ok := e.bundle().FindJWTAuthority(ownKID); !ok {
		t.Fatal("the server's own JWT key left the bundle")
	}
}

// TestMintDownstreamX509CANoRoom: a server whose own CA sits under an
// upstream root of path length 1 has no room for a CA below its own, and
// says so instead of signing one that would not verify.
func TestMintDownstreamX509CANoRoom(t *testing.T) {
	key := newKey(t)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "upstream root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLen: 1, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOptions{authority: &keymanager.Upstream{Issuer: &x509ca.Issuer{Cert: root, Signer: key}, Roots: []*x509.Certificate{root}}})
	a := e.attest(agentA)
	down := e.createEntry("spiffe://example.org/regional", agentA, func(en *entry.Entry) { en.Downstream = true })
	_, err = a.client.MintDownstreamX509CA(ctxT(t), &nodev1.MintDownstreamX509CARequest{EntryId: down.ID, Csr: caCSR(t, newKey(t), nil)})
	wantStatus(t, err, codes.FailedPrecondition)
}
