package nodeapi_test

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	gojwtsvid "github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/jwtsvid"
	"writ.dev/writ/ca/nodeapi"

	"writ.dev/writ/internal/logkey"
)

const msgNotAuthorized = "entry is not authorized for this agent"

// greedyCSR asks for everything an SVID must not take from a CSR: other
// SPIFFE IDs, DNS names and the CA flag.
func greedyCSR(t *testing.T) ([]byte, *ecdsa.PublicKey) {
	t.Helper()
	key := newKey(t)
	bc, err := asn1.Marshal(struct{ IsCA bool }{true})
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:         pkix.Name{CommonName: "evil.example.com"},
		DNSNames:        []string{"evil.example.com"},
		URIs:            []*url.URL{{Scheme: "spiffe", Host: "example.org", Path: "/admin"}},
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: bc}},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der, &key.PublicKey
}

func TestBatchSignX509SVID(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	e.attest(agentB)
	withDNS := e.createEntry("spiffe://example.org/web", agentA, func(en *entry.Entry) {
		en.DNSNames = []string{"web.example.org", "web"}
		en.X509SVIDTTL = 10 * time.Minute
	})
	plain := e.createEntry("spiffe://example.org/plain", agentA, nil)
	others := e.createEntry("spiffe://example.org/other", agentB, nil)
	// The admin API never stores an entry with the server's ID; the node
	// API does not trust that.
	server := e.createEntry("spiffe://example.org/writ/server", agentA, nil)

	greedy, greedyKey := greedyCSR(t)
	reqs := []*nodev1.X509SVIDRequest{
		{EntryId: withDNS.ID, Csr: greedy},
		{EntryId: plain.ID, Csr: newCSR(t, newKey(t))},
		{EntryId: others.ID, Csr: newCSR(t, newKey(t))},
		{EntryId: server.ID, Csr: newCSR(t, newKey(t))},
		{EntryId: entry.NewID(), Csr: newCSR(t, newKey(t))},
		{EntryId: "", Csr: newCSR(t, newKey(t))},
		{EntryId: plain.ID, Csr: []byte("junk")},
	}
	wantCodes := []codes.Code{codes.OK, codes.OK, codes.PermissionDenied, codes.PermissionDenied, codes.PermissionDenied, codes.PermissionDenied, codes.InvalidArgument}
	resp, err := a.client.BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{Requests: reqs})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Results) != len(reqs) {
		t.Fatalf("%d results for %d requests", len(resp.Results), len(reqs))
	}
	for i, res := range resp.Results {
		if res.EntryId != reqs[i].EntryId || codes.Code(res.Status.GetCode()) != wantCodes[i] {
			t.Errorf("result %d: %s %v %q, want %s %v", i, res.EntryId, codes.Code(res.Status.GetCode()), res.Status.GetMessage(), reqs[i].EntryId, wantCodes[i])
		}
		if wantCodes[i] == codes.PermissionDenied && res.Status.GetMessage() != msgNotAuthorized {
			t.Errorf("result %d: message %q, want %q", i, res.Status.GetMessage(), msgNotAuthorized)
		}
		if wantCodes[i] != codes.OK && len(res.SvidChain) != 0 {
			t.Errorf("result %d: refused but has a chain", i)
		}
	}

	now := e.clock.Now()
	bundle := e.bundle()
	check := func(res *nodev1.X509SVIDResult, en *entry.Entry, ttl time.Duration) *x509.Certificate {
		t.Helper()
		if len(res.SvidChain) != 1 {
			t.Fatalf("chain of %d certificates, want the leaf", len(res.SvidChain))
		}
		id, _, err := x509svid.ParseAndVerify(res.SvidChain, bundle, x509svid.WithTime(now))
		if err != nil {
			t.Fatalf("SVID does not verify: %v", err)
		}
		if id != en.SPIFFEID {
			t.Errorf("SVID for %s, want %s", id, en.SPIFFEID)
		}
		leaf, _ := x509.ParseCertificate(res.SvidChain[0])
		if !slices.Equal(leaf.DNSNames, en.DNSNames) || len(leaf.URIs) != 1 || leaf.IsCA {
			t.Errorf("SVID has DNS names %q, URIs %v, IsCA %v", leaf.DNSNames, leaf.URIs, leaf.IsCA)
		}
		if got := leaf.NotAfter.Sub(now); got > ttl || got < ttl-time.Second {
			t.Errorf("SVID lives %v, want %v", got, ttl)
		}
		return leaf
	}
	leaf := check(resp.Results[0], withDNS, 10*time.Minute)
	if !greedyKey.Equal(leaf.PublicKey) {
		t.Error("SVID is not for the CSR's key")
	}
	if leaf.Subject.CommonName != "web.example.org" {
		t.Errorf("common name %q, want the entry's first DNS name", leaf.Subject.CommonName)
	}
	check(resp.Results[1], plain, nodeapi.DefaultX509SVIDTTL)

	if recs := e.logs.find("X.509-SVIDs refused"); len(recs) != 1 || recs[0].attrs[logkey.SPIFFEID] != agentA || recs[0].attrs["count"] != "4" {
		t.Errorf("want one summary of the refusals, got %v", recs)
	}
}

func TestBatchSignLimits(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	resp, err := a.client.BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{})
	if err != nil || len(resp.Results) != 0 {
		t.Errorf("empty batch: %v, %d results", err, len(resp.GetResults()))
	}
	reqs := make([]*nodev1.X509SVIDRequest, nodeapi.MaxBatchSign+1)
	for i := range reqs {
		reqs[i] = &nodev1.X509SVIDRequest{EntryId: "x"}
	}
	_, err = a.client.BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{Requests: reqs})
	wantCode(t, err, codes.InvalidArgument, "")
	resp, err = a.client.BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{Requests: reqs[:nodeapi.MaxBatchSign]})
	if err != nil || len(resp.Results) != nodeapi.MaxBatchSign {
		t.Errorf("full batch: %v", err)
	}
}

// TestBatchSignSeesNewEntryAtOnce: an entry is signable as soon as the
// Sync stream has announced it.
func TestBatchSignSeesNewEntryAtOnce(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	s := e.sync(a)
	s.next()
	en := e.createEntry("spiffe://example.org/w", agentA, nil)
	s.until("announced", func() bool { return s.have[en.ID] != nil })
	resp, err := a.client.BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{Requests: []*nodev1.X509SVIDRequest{{EntryId: en.ID, Csr: newCSR(t, newKey(t))}}})
	if err != nil || resp.Results[0].Status.GetCode() != 0 {
		t.Fatalf("%v %v", err, resp)
	}
}

func TestSignJWTSVID(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	e.attest(agentB)
	en := e.createEntry("spiffe://example.org/api", agentA, func(en *entry.Entry) { en.JWTSVIDTTL = 2 * time.Minute })
	plain := e.createEntry("spiffe://example.org/plain", agentA, nil)
	others := e.createEntry("spiffe://example.org/other", agentB, nil)

	resp, err := a.client.SignJWTSVID(ctxT(t), &nodev1.SignJWTSVIDRequest{EntryId: en.ID, Audience: []string{"db", "cache"}})
	if err != nil {
		t.Fatal(err)
	}
	now := e.clock.Now()
	bundle := e.bundle()
	claims, err := jwtsvid.Validate(resp.Token, bundle, []string{"cache"}, now)
	if err != nil {
		t.Fatalf("jwtsvid.Validate: %v", err)
	}
	if claims.ID != en.SPIFFEID || !slices.Equal(claims.Audience, []string{"db", "cache"}) || !claims.Expiry.Equal(now.Add(2*time.Minute)) || resp.ExpiresAt != claims.Expiry.Unix() {
		t.Errorf("claims %+v, expires_at %d", claims, resp.ExpiresAt)
	}
	svid, err := gojwtsvid.ParseAndValidate(resp.Token, bundle, []string{"db"})
	if err != nil {
		t.Fatalf("go-spiffe: %v", err)
	}
	if svid.ID != en.SPIFFEID {
		t.Errorf("go-spiffe: subject %s", svid.ID)
	}

	resp, err = a.client.SignJWTSVID(ctxT(t), &nodev1.SignJWTSVIDRequest{EntryId: plain.ID, Audience: []string{"db"}})
	if err != nil {
		t.Fatal(err)
	}
	if claims, err := jwtsvid.Validate(resp.Token, bundle, []string{"db"}, now); err != nil || !claims.Expiry.Equal(now.Add(nodeapi.DefaultJWTSVIDTTL)) {
		t.Errorf("default TTL: %v, %v", err, claims)
	}

	tests := []struct {
		name    string
		entryID string
		aud     []string
		code    codes.Code
	}{
		{name: "other agent's entry", entryID: others.ID, aud: []string{"db"}, code: codes.PermissionDenied},
		{name: "unknown entry", entryID: entry.NewID(), aud: []string{"db"}, code: codes.PermissionDenied},
		{name: "no audience", entryID: en.ID, code: codes.InvalidArgument},
		{name: "empty audience", entryID: en.ID, aud: []string{"db", ""}, code: codes.InvalidArgument},
		{name: "long audience", entryID: en.ID, aud: []string{strings.Repeat("a", nodeapi.MaxAudienceLength+1)}, code: codes.InvalidArgument},
		{name: "too many audiences", entryID: en.ID, aud: slices.Repeat([]string{"a"}, nodeapi.MaxAudiences+1), code: codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := a.client.SignJWTSVID(ctxT(t), &nodev1.SignJWTSVIDRequest{EntryId: tt.entryID, Audience: tt.aud})
			msg := ""
			if tt.code == codes.PermissionDenied {
				msg = msgNotAuthorized
			}
			wantCode(t, err, tt.code, msg)
		})
	}
	// At the limits.
	if _, err := a.client.SignJWTSVID(ctxT(t), &nodev1.SignJWTSVIDRequest{EntryId: en.ID, Audience: slices.Repeat([]string{strings.Repeat("a", nodeapi.MaxAudienceLength)}, nodeapi.MaxAudiences)}); err != nil {
		t.Errorf("audiences at the limits: %v", err)
	}
}
