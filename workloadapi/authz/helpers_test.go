package authz_test

import (
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"writ.dev/writ/ca/jwtsvid"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/leakcheck"
	"writ.dev/writ/internal/testca"
)

// TestMain fails the run if the tests leave goroutines behind.
func TestMain(m *testing.M) { os.Exit(leakcheck.Main(m)) }

var (
	td      = spiffeid.RequireTrustDomainFromString("example.org")
	otherTD = spiffeid.RequireTrustDomainFromString("other.test")
	evilTD  = spiffeid.RequireTrustDomainFromString("evil.org")
	// t0 is the time of the JWT tests; certificates are minted at the
	// real time, as handshakes read the real clock unless told otherwise.
	t0 = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
)

// pki is a trust domain's CA and JWT signing key, minted at runtime.
type pki struct {
	td     spiffeid.TrustDomain
	ca     *x509ca.Issuer
	jwtKey jwtsvid.Key
}

func newPKI(tb testing.TB, td spiffeid.TrustDomain) *pki {
	tb.Helper()
	ca := testca.New(tb, td, time.Now(), 24*time.Hour)
	return &pki{td: td, ca: ca.Issuer(), jwtKey: jwtsvid.Key{ID: "k-" + td.Name(), Signer: mustKey(tb)}}
}

func mustKey(tb testing.TB) crypto.Signer {
	tb.Helper()
	k, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// svid mints an X.509-SVID for path, valid for ttl from now.
func (p *pki) svid(tb testing.TB, path string, ttl time.Duration, dnsNames ...string) *x509svid.SVID {
	tb.Helper()
	key := mustKey(tb)
	der, err := x509ca.SignX509SVID(time.Now(), p.ca, x509ca.SVIDParams{ID: spiffeid.RequireFromPath(p.td, path), TTL: ttl, PublicKey: key.Public(), DNSNames: dnsNames})
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	id := spiffeid.RequireFromPath(p.td, path)
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

func (p *pki) x509Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(p.td, []*x509.Certificate{p.ca.Cert})
}

func (p *pki) jwtBundle() *jwtbundle.Bundle {
	b := jwtbundle.New(p.td)
	if err := b.AddJWTAuthority(p.jwtKey.ID, p.jwtKey.Signer.Public()); err != nil {
		panic(err)
	}
	return b
}

// token signs a JWT-SVID for path at now.
func (p *pki) token(tb testing.TB, path string, aud []string, now time.Time, ttl time.Duration) string {
	tb.Helper()
	tok, _, err := jwtsvid.Sign(now, p.jwtKey, spiffeid.RequireFromPath(p.td, path), aud, ttl, now.Add(24*time.Hour))
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// source is an X509Source of a fixed SVID and a set of bundles.
type source struct {
	svid    *x509svid.SVID
	bundles *x509bundle.Set
}

func newSource(svid *x509svid.SVID, bundles ...*x509bundle.Bundle) *source {
	return &source{svid: svid, bundles: x509bundle.NewSet(bundles...)}
}

func (s *source) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }

func (s *source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.bundles.GetX509BundleForTrustDomain(td)
}

// forgeToken builds a compact JWS from a header, claims and signature
// without signing.
func forgeToken(header, claims map[string]any, sig []byte) string {
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			panic(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	return enc(header) + "." + enc(claims) + "." + base64.RawURLEncoding.EncodeToString(sig)
}
