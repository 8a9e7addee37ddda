package publish_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore/boltstore"
	"writ.dev/writ/ca/publish"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func newKey(t *testing.T) crypto.PublicKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k.Public()
}

// setup returns a real store holding a bundle with one JWT key, and a
// running Source of it.
func setup(t *testing.T) (*boltstore.Store, *publish.Source) {
	t.Helper()
	store, err := boltstore.Open(filepath.Join(t.TempDir(), "db"), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	setBundle(t, store, map[string]crypto.PublicKey{"k1": newKey(t)}, 1)
	src := publish.NewSource(td, store, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { src.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-src.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("source never read the bundle")
	}
	return store, src
}

func setBundle(t *testing.T, store *boltstore.Store, keys map[string]crypto.PublicKey, seq uint64) {
	t.Helper()
	_, err := store.UpdateBundle(context.Background(), td, func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
		b := spiffebundle.New(td)
		for id, k := range keys {
			if err := b.AddJWTAuthority(id, k); err != nil {
				return nil, err
			}
		}
		b.SetRefreshHint(10 * time.Minute)
		b.SetSequenceNumber(seq)
		return b, nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func do(h http.Handler, method, target string, hdr map[string]string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func kids(t *testing.T, body []byte) []string {
	t.Helper()
	var set struct {
		Keys []struct {
			Kid, Use, Alg string
		} `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, k := range set.Keys {
		if k.Use != "sig" || k.Alg != "ES256" {
			t.Errorf("key %s: use %q alg %q, want sig and ES256", k.Kid, k.Use, k.Alg)
		}
		out = append(out, k.Kid)
	}
	return out
}

func TestOIDCDiscoveryAndJWKS(t *testing.T) {
	store, src := setup(t)
	issuer, _ := url.Parse("https://oidc.example.org/td")
	h := publish.OIDCHandler(src, issuer)

	w := do(h, http.MethodGet, "/td/.well-known/openid-configuration", nil)
	var disc map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &disc); err != nil || w.Code != http.StatusOK {
		t.Fatalf("discovery: %d %v", w.Code, err)
	}
	if disc["issuer"] != "https://oidc.example.org/td" || disc["jwks_uri"] != "https://oidc.example.org/td/keys" {
		t.Fatalf("discovery document %v", disc)
	}

	w = do(h, http.MethodGet, "/td/keys", nil)
	if got := kids(t, w.Body.Bytes()); len(got) != 1 || got[0] != "k1" {
		t.Fatalf("JWKS kids %v", got)
	}
	if cc := w.Header().Get("Cache-Control"); cc != "public, max-age=300" {
		t.Errorf("Cache-Control %q, want half the 10m refresh hint", cc)
	}
	etag := w.Header().Get("ETag")
	if w := do(h, http.MethodGet, "/td/keys", map[string]string{"If-None-Match": etag}); w.Code != http.StatusNotModified || w.Body.Len() != 0 {
		t.Fatalf("conditional request: %d, %d bytes", w.Code, w.Body.Len())
	}
	if w := do(h, http.MethodGet, "/td/keys", map[string]string{"If-None-Match": `W/` + etag + `, "other"`}); w.Code != http.StatusNotModified {
		t.Fatalf("weak conditional request: %d", w.Code)
	}

	// A new key appears in the JWKS as soon as it is in the bundle, and
	// the ETag changes.
	setBundle(t, store, map[string]crypto.PublicKey{"k1": newKey(t), "k2": newKey(t)}, 2)
	deadline := time.Now().Add(10 * time.Second)
	for {
		w = do(h, http.MethodGet, "/td/keys", map[string]string{"If-None-Match": etag})
		if w.Code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("JWKS did not change after the bundle did")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := kids(t, w.Body.Bytes()); len(got) != 2 || got[0] != "k1" || got[1] != "k2" {
		t.Fatalf("JWKS kids after the change %v", got)
	}

	for _, tc := range []struct {
		method, target string
		code           int
	}{
		{http.MethodPost, "/td/keys", http.StatusMethodNotAllowed},
		{http.MethodGet, "/keys", http.StatusNotFound},
		{http.MethodGet, "/td/other", http.StatusNotFound},
		{http.MethodHead, "/td/keys", http.StatusOK},
	} {
		if w := do(h, tc.method, tc.target, nil); w.Code != tc.code || (tc.method == http.MethodHead && w.Body.Len() != 0) {
			t.Errorf("%s %s: %d (%d bytes), want %d", tc.method, tc.target, w.Code, w.Body.Len(), tc.code)
		}
	}
}

func TestBundleEndpoint(t *testing.T) {
	_, src := setup(t)
	h := publish.BundleHandler(src)
	w := do(h, http.MethodGet, "/", nil)
	if w.Code != http.StatusOK {
		t.Fatalf("GET /: %d", w.Code)
	}
	b, err := spiffebundle.Parse(td, w.Body.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	seq, okSeq := b.SequenceNumber()
	hint, okHint := b.RefreshHint()
	if !okSeq || seq != 1 || !okHint || hint != 10*time.Minute || !b.HasJWTAuthority("k1") {
		t.Fatalf("bundle: sequence %d %v, hint %s %v", seq, okSeq, hint, okHint)
	}
	if w := do(h, http.MethodGet, "/other", nil); w.Code != http.StatusNotFound {
		t.Fatalf("GET /other: %d", w.Code)
	}
}

func TestNotReadyIsUnavailable(t *testing.T) {
	store, err := boltstore.Open(filepath.Join(t.TempDir(), "db"), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	src := publish.NewSource(td, store, nil, nil) // not running: no bundle yet
	if w := do(publish.BundleHandler(src), http.MethodGet, "/", nil); w.Code != http.StatusServiceUnavailable {
		t.Fatalf("bundle before the first read: %d", w.Code)
	}
}
