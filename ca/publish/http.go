package publish

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// serveDocument writes doc with caching headers, answering a matching
// If-None-Match with 304 Not Modified.
func serveDocument(w http.ResponseWriter, r *http.Request, doc document, maxAge time.Duration, contentType string) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Cache-Control", "public, max-age="+strconv.Itoa(int(maxAge/time.Second)))
	h.Set("ETag", doc.etag)
	h.Set("X-Content-Type-Options", "nosniff")
	if etagMatches(r.Header.Get("If-None-Match"), doc.etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h.Set("Content-Length", strconv.Itoa(len(doc.body)))
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(doc.body)
}

// etagMatches implements If-None-Match's weak comparison (RFC 9110
// 13.1.2) against a strong etag.
func etagMatches(header, etag string) bool {
	if header == "" {
		return false
	}
	for tag := range strings.SplitSeq(header, ",") {
		tag = strings.TrimSpace(tag)
		if tag == "*" || strings.TrimPrefix(tag, "W/") == etag {
			return true
		}
	}
	return false
}

// allowGet refuses methods other than GET and HEAD.
func allowGet(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", "GET, HEAD")
	http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	return false
}

// BundleHandler serves the bundle in SPIFFE bundle format at "/", as the
// SPIFFE bundle endpoint profile specifies, with spiffe_sequence and
// spiffe_refresh_hint set.
func BundleHandler(src *Source) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !allowGet(w, r) {
			return
		}
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		snap, err := src.load()
		if err != nil {
			http.Error(w, "bundle not available yet", http.StatusServiceUnavailable)
			return
		}
		serveDocument(w, r, snap.spiffe, cacheAge(snap.refreshHint), "application/json")
	})
}

// cacheAge is how long caches may keep the bundle: half its refresh hint,
// so that a relying party that refreshes at the hint through a cache sees
// a copy at most one hint old.
func cacheAge(hint time.Duration) time.Duration {
	return max(hint/2, time.Second)
}

// Well-known paths of the OIDC handler.
const (
	DiscoveryPath = "/.well-known/openid-configuration"
	JWKSPath      = "/keys"
)

// OIDCHandler serves OpenID Connect discovery for issuer (an https URL,
// or http behind a TLS-terminating proxy) at DiscoveryPath, and the JWT
// authorities as a JWKS at JWKSPath under the issuer.
func OIDCHandler(src *Source, issuer *url.URL) http.Handler {
	jwksURI := issuer.JoinPath(JWKSPath).String()
	discovery := newDocument(mustJSON(map[string]any{
		"issuer":                                issuer.String(),
		"jwks_uri":                              jwksURI,
		"authorization_endpoint":                "",
		"response_types_supported":              []string{"id_token"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": []string{"ES256", "ES384", "RS256"},
	}))
	base := strings.TrimSuffix(issuer.Path, "/")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !allowGet(w, r) {
			return
		}
		snap, err := src.load()
		if err != nil {
			http.Error(w, "keys not available yet", http.StatusServiceUnavailable)
			return
		}
		switch r.URL.Path {
		case base + DiscoveryPath:
			serveDocument(w, r, discovery, cacheAge(snap.refreshHint), "application/json")
		case base + JWKSPath:
			serveDocument(w, r, snap.jwks, cacheAge(snap.refreshHint), "application/jwk-set+json")
		default:
			http.NotFound(w, r)
		}
	})
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
