package federation_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/datastore/boltstore"
	"writ.dev/writ/ca/federation"
)

var partner = spiffeid.RequireTrustDomainFromString("partner.test")

// ca is a CA certificate and key of a trust domain.
type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T, td spiffeid.TrustDomain) *ca {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca " + td.Name()}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, URIs: []*url.URL{td.ID().URL()}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &ca{cert: cert, key: key}
}

// svid returns a TLS certificate for id, signed by c, valid for 127.0.0.1.
func (c *ca) svid(t *testing.T, id spiffeid.ID) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, URIs: []*url.URL{id.URL()}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, key.Public(), c.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func bundleOf(c *ca, seq uint64) *spiffebundle.Bundle {
	b := spiffebundle.FromX509Authorities(partner, []*x509.Certificate{c.cert})
	b.SetSequenceNumber(seq)
	b.SetRefreshHint(time.Minute)
	return b
}

// endpoint is a bundle endpoint whose answer the test sets.
type endpoint struct {
	srv    *httptest.Server
	answer atomic.Pointer[func(http.ResponseWriter, *http.Request)]
}

// openStore opens a datastore of the test's own, closed when it ends.
func openStore(t *testing.T) *boltstore.Store {
	t.Helper()
	store, err := boltstore.Open(filepath.Join(t.TempDir(), "db"), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return store
}

// spiffeEndpoint starts partner's bundle endpoint with an SVID of its
// server signed by pca, and returns it with an https_spiffe relationship
// to it.
func spiffeEndpoint(t *testing.T, pca *ca) (*endpoint, *datastore.Federation) {
	t.Helper()
	serverID := spiffeid.RequireFromString("spiffe://partner.test/writ/server")
	ep := newEndpoint(t, pca.svid(t, serverID))
	return ep, &datastore.Federation{TrustDomain: partner, BundleEndpointURL: ep.srv.URL + "/", Profile: datastore.ProfileHTTPSSPIFFE, EndpointSPIFFEID: serverID}
}

func newEndpoint(t *testing.T, cert tls.Certificate) *endpoint {
	e := &endpoint{}
	e.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { (*e.answer.Load())(w, r) }))
	e.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	e.srv.StartTLS()
	t.Cleanup(e.srv.Close)
	return e
}

func (e *endpoint) serve(body []byte) {
	fn := func(w http.ResponseWriter, _ *http.Request) { w.Write(body) }
	e.answer.Store(&fn)
}

func (e *endpoint) serveBundle(t *testing.T, b *spiffebundle.Bundle) {
	t.Helper()
	doc, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	e.serve(doc)
}

func TestFetcherHTTPSSPIFFE(t *testing.T) {
	ctx := context.Background()
	store := openStore(t)
	pca := newCA(t, partner)
	ep, rel := spiffeEndpoint(t, pca)
	f := federation.New(federation.Config{Store: store, Timeout: 500 * time.Millisecond})

	// Without a bootstrap bundle the endpoint cannot be authenticated.
	ep.serveBundle(t, bundleOf(pca, 5))
	if err := f.Refresh(ctx, rel); err == nil || !strings.Contains(err.Error(), "no bundle of partner.test") {
		t.Fatalf("refresh without a trust bundle: %v", err)
	}
	if _, err := store.UpdateBundle(ctx, partner, func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error) { return bundleOf(pca, 1), nil }); err != nil {
		t.Fatal(err)
	}

	// A good bundle is stored.
	next := bundleOf(pca, 5)
	other := newCA(t, partner) // the partner publishes its next CA
	next.AddX509Authority(other.cert)
	ep.serveBundle(t, next)
	if err := f.Refresh(ctx, rel); err != nil {
		t.Fatalf("refresh: %v", err)
	}
	stored := requireStored(t, store, 5, 2)

	bad := map[string]struct {
		serve func()
		want  error // nil: any error
	}{
		"a sequence number going backwards": {serve: func() { ep.serveBundle(t, bundleOf(pca, 4)) }, want: federation.ErrSequence},
		"an authority of another trust domain": {serve: func() {
			b := bundleOf(pca, 6)
			b.AddX509Authority(newCA(t, spiffeid.RequireTrustDomainFromString("evil.test")).cert)
			ep.serveBundle(t, b)
		}, want: federation.ErrBundle},
		"the bundle of another trust domain": {serve: func() {
			ep.serveBundle(t, bundleOf(newCA(t, spiffeid.RequireTrustDomainFromString("evil.test")), 7))
		}, want: federation.ErrBundle},
		// A bundle that is acceptable in every way but its size.
		"an oversized body": {serve: func() { ep.serve(oversizedBundle(t, pca, 6)) }, want: federation.ErrBundleTooLarge},
		"a malformed body":  {serve: func() { ep.serve([]byte(`{"keys":[{"kty":"EC","use":"x509-svid","x5c":["bm90IGEgY2VydA=="]}]}`)) }, want: federation.ErrBundle},
		"an empty bundle":   {serve: func() { ep.serve([]byte(`{"keys":[]}`)) }, want: federation.ErrBundle},
		"a slow endpoint": {serve: func() {
			fn := func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }
			ep.answer.Store(&fn)
		}},
		// Following it would store a good bundle: a redirect is refused,
		// as the bundle endpoint URL names the one place to fetch from.
		"a redirect to a good bundle": {serve: func() {
			doc, err := bundleOf(pca, 6).Marshal()
			if err != nil {
				t.Fatal(err)
			}
			fn := func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/moved" {
					w.Write(doc)
					return
				}
				http.Redirect(w, r, "/moved", http.StatusFound)
			}
			ep.answer.Store(&fn)
		}},
		"an error status": {serve: func() {
			fn := func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", http.StatusInternalServerError) }
			ep.answer.Store(&fn)
		}},
	}
	for name, tc := range bad {
		tc.serve()
		start := time.Now()
		if err := f.Refresh(ctx, rel); err == nil {
			t.Errorf("%s: accepted", name)
		} else if tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		} else {
			t.Logf("%s: %v", name, err)
		}
		if time.Since(start) > 5*time.Second {
			t.Errorf("%s: the refresh took %s", name, time.Since(start))
		}
		if got := requireStored(t, store, 5, 2); !got.Equal(stored) {
			t.Errorf("%s: the stored bundle changed", name)
		}
	}
	if st, ok := f.Status(partner); !ok || st.LastError == "" || st.Sequence != 5 {
		t.Errorf("status after failures: %+v", st)
	}

	// An endpoint that authenticates as another SPIFFE ID is refused.
	imposter := newEndpoint(t, pca.svid(t, spiffeid.RequireFromString("spiffe://partner.test/somebody")))
	imposter.serveBundle(t, bundleOf(pca, 9))
	rel2 := *rel
	rel2.BundleEndpointURL = imposter.srv.URL
	if err := f.Refresh(ctx, &rel2); err == nil {
		t.Fatal("an endpoint with the wrong SPIFFE ID was accepted")
	}
	requireStored(t, store, 5, 2)
}

// oversizedBundle is c's bundle, sequence seq, padded with JWT authorities
// to just over MaxBundleSize: a valid bundle refused only for its size.
func oversizedBundle(t *testing.T, c *ca, seq uint64) []byte {
	t.Helper()
	b := bundleOf(c, seq)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	size := func() int {
		doc, err := b.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return len(doc)
	}
	add := func(i int) {
		if err := b.AddJWTAuthority(fmt.Sprintf("k%07d", i), key.Public()); err != nil {
			t.Fatal(err)
		}
	}
	base := size()
	add(0)
	n := (federation.MaxBundleSize-base)/(size()-base) + 2
	for i := 1; i < n; i++ {
		add(i)
	}
	doc, err := b.Marshal()
	if err != nil || len(doc) <= federation.MaxBundleSize {
		t.Fatalf("padded bundle of %d bytes: %v", len(doc), err)
	}
	return doc
}

func requireStored(t *testing.T, store *boltstore.Store, seq uint64, authorities int) *spiffebundle.Bundle {
	t.Helper()
	b, err := store.FetchBundle(context.Background(), partner)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := b.SequenceNumber(); got != seq || len(b.X509Authorities()) != authorities {
		t.Fatalf("stored bundle: sequence %d with %d authorities, want %d with %d", got, len(b.X509Authorities()), seq, authorities)
	}
	return b
}

func TestFetcherHTTPSWeb(t *testing.T) {
	ctx := context.Background()
	store := openStore(t)
	webCA := newCA(t, spiffeid.RequireTrustDomainFromString("web.test"))
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(3), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, webCA.cert, key.Public(), webCA.key)
	if err != nil {
		t.Fatal(err)
	}
	ep := newEndpoint(t, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key})
	ep.serveBundle(t, bundleOf(newCA(t, partner), 3))
	rel := &datastore.Federation{TrustDomain: partner, BundleEndpointURL: ep.srv.URL, Profile: datastore.ProfileHTTPSWeb}

	// Not trusted by the system roots.
	if err := federation.New(federation.Config{Store: store}).Refresh(ctx, rel); err == nil {
		t.Fatal("an endpoint with an untrusted certificate was accepted")
	}
	roots := x509.NewCertPool()
	roots.AddCert(webCA.cert)
	if err := federation.New(federation.Config{Store: store, RootCAs: roots}).Refresh(ctx, rel); err != nil {
		t.Fatalf("https_web refresh: %v", err)
	}
	requireStored(t, store, 3, 1)
}

// records keeps the log records a Fetcher emits.
type records struct {
	mu   sync.Mutex // guards recs
	recs []slog.Record
}

func (h *records) Enabled(context.Context, slog.Level) bool { return true }
func (h *records) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r.Clone())
	return nil
}
func (h *records) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *records) WithGroup(string) slog.Handler      { return h }

// take returns the records so far and forgets them.
func (h *records) take() []slog.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.recs
	h.recs = nil
	return r
}

// The spiffe_sequence is optional, but once a trust domain's bundle
// carried one, a changed bundle must carry a higher one: a bundle without
// a sequence number, or with the same number and other content, is
// refused with a warning and the last good bundle kept.
func TestFetcherSequenceRules(t *testing.T) {
	ctx := context.Background()
	store := openStore(t)
	pca, next := newCA(t, partner), newCA(t, partner)
	ep, rel := spiffeEndpoint(t, pca)
	logs := &records{}
	f := federation.New(federation.Config{Store: store, Timeout: 5 * time.Second, Logger: slog.New(logs)})
	// The bootstrap bundle has no sequence number.
	noSeq := func(cas ...*ca) *spiffebundle.Bundle {
		b := spiffebundle.New(partner)
		for _, c := range cas {
			b.AddX509Authority(c.cert)
		}
		return b
	}
	if _, err := store.UpdateBundle(ctx, partner, func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error) { return noSeq(pca), nil }); err != nil {
		t.Fatal(err)
	}
	stored := func() *spiffebundle.Bundle {
		t.Helper()
		b, err := store.FetchBundle(ctx, partner)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	withSeq := func(seq uint64, cas ...*ca) *spiffebundle.Bundle {
		b := noSeq(cas...)
		b.SetSequenceNumber(seq)
		return b
	}

	steps := []struct {
		name   string
		serve  *spiffebundle.Bundle
		refuse bool
	}{
		// No sequence seen yet: a change without one is applied.
		{name: "no sequence yet, changed without one", serve: noSeq(pca, next)},
		{name: "the first sequence number", serve: withSeq(3, pca, next)},
		{name: "the same bundle again", serve: withSeq(3, pca, next)},
		{name: "a sequence seen, then a bundle without one", serve: noSeq(pca), refuse: true},
		{name: "the same sequence with other content", serve: withSeq(3, pca), refuse: true},
		{name: "the same sequence with another refresh hint", serve: func() *spiffebundle.Bundle {
			b := withSeq(3, pca, next)
			b.SetRefreshHint(time.Minute)
			return b
		}(), refuse: true},
		{name: "a higher sequence", serve: withSeq(4, next)},
	}
	for _, s := range steps {
		before := stored()
		ep.serveBundle(t, s.serve)
		err := f.Refresh(ctx, rel)
		recs := logs.take()
		if !s.refuse {
			if err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			if got := stored(); !got.Equal(s.serve) {
				t.Fatalf("%s: the fetched bundle was not stored", s.name)
			}
			continue
		}
		if !errors.Is(err, federation.ErrSequence) {
			t.Fatalf("%s: %v, want ErrSequence", s.name, err)
		}
		if got := stored(); !got.Equal(before) {
			t.Fatalf("%s: the stored bundle changed", s.name)
		}
		warned := false
		for _, r := range recs {
			r.Attrs(func(a slog.Attr) bool {
				if r.Level == slog.LevelWarn && a.Key == "trust_domain" && a.Value.String() == partner.Name() {
					warned = true
				}
				return true
			})
		}
		if !warned {
			t.Fatalf("%s: no warning naming the trust domain logged (%d records)", s.name, len(recs))
		}
	}
}

// A peer's endpoint decides what it answers, including the text of its
// status line and how much of a response head it sends. Neither may grow
// the relationship's status, the log or the error an operator sees
// beyond a bound: the fetch is refused with a short error, and the last
// good bundle kept.
func TestFetcherBoundsWhatThePeerSends(t *testing.T) {
	ctx := context.Background()
	store := openStore(t)
	pca := newCA(t, partner)
	ep, rel := spiffeEndpoint(t, pca)
	if _, err := store.UpdateBundle(ctx, partner, func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error) { return bundleOf(pca, 1), nil }); err != nil {
		t.Fatal(err)
	}
	logs := &records{}
	f := federation.New(federation.Config{Store: store, Timeout: 5 * time.Second, Logger: slog.New(logs)})
	good, err := bundleOf(pca, 2).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwk, err := json.Marshal(jose.JSONWebKey{Key: key.Public(), KeyID: "k", Use: "jwt-svid"})
	if err != nil {
		t.Fatal(err)
	}
	// raw answers with head, written as is, then body.
	raw := func(head string, body []byte) func(http.ResponseWriter, *http.Request) {
		return func(w http.ResponseWriter, _ *http.Request) {
			conn, buf, err := w.(http.Hijacker).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			buf.WriteString(head)
			buf.Write(body)
			buf.Flush()
		}
	}
	long := strings.Repeat("x", 2<<20)
	tests := []struct {
		name string
		fn   func(http.ResponseWriter, *http.Request)
	}{
		{"a long reason phrase", raw("HTTP/1.1 503 "+long+"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", nil)},
		{"a long status code", raw("HTTP/1.1 "+long+"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", nil)},
		{"a long header before a good bundle", raw(fmt.Sprintf("HTTP/1.1 200 OK\r\nX-Padding: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", long, len(good)), good)},
		// The JWK parser quotes a malformed x5u URL in its error.
		{"a long malformed URL in the bundle", func(w http.ResponseWriter, _ *http.Request) {
			w.Write([]byte(`{"keys":[{"x5u":"%zz` + long[:federation.MaxBundleSize/2] + `",` + string(jwk[1:]) + `]}`))
		}},
	}
	const maxText = 4 << 10
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fn := tt.fn
			ep.answer.Store(&fn)
			err := f.Refresh(ctx, rel)
			if err == nil {
				t.Fatal("accepted")
			}
			if n := len(err.Error()); n > maxText {
				t.Errorf("error of %d bytes, want at most %d", n, maxText)
			}
			if st, _ := f.Status(partner); len(st.LastError) > maxText {
				t.Errorf("status error of %d bytes, want at most %d", len(st.LastError), maxText)
			}
			for _, r := range logs.take() {
				r.Attrs(func(a slog.Attr) bool {
					if n := len(a.Value.String()); n > maxText {
						t.Errorf("log attribute %s of %d bytes, want at most %d", a.Key, n, maxText)
					}
					return true
				})
			}
			requireStored(t, store, 1, 1)
		})
	}
}
