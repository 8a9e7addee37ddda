package upstream_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/ca/keymanager/upstream"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/datadir"
)

var (
	td  = spiffeid.RequireTrustDomainFromString("example.org")
	now = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
)

// ca is a certificate minted at runtime with its key.
type ca struct {
	cert *x509.Certificate
	key  crypto.Signer
}

var serial int64

// mint makes a CA certificate named cn signed by parent (self-signed if
// parent is nil), valid a year around now unless edit changes it.
func mint(t testing.TB, cn string, parent *ca, edit func(*x509.Certificate)) *ca {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-24 * time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            -1,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	if edit != nil {
		edit(tmpl)
	}
	issuer, signer := tmpl, crypto.Signer(key)
	if parent != nil {
		issuer, signer = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &ca{cert, key}
}

func certs(cs ...*ca) []*x509.Certificate {
	out := make([]*x509.Certificate, len(cs))
	for i, c := range cs {
		out[i] = c.cert
	}
	return out
}

// mintWrit has the upstream sign a Writ CA, signs an SVID with it and
// verifies the SVID with go-spiffe against roots alone.
func mintWrit(t *testing.T, up keymanager.Authority, roots []*x509.Certificate, ttl time.Duration) *keymanager.CA {
	t.Helper()
	key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	got, err := up.MintCA(context.Background(), keymanager.CARequest{TrustDomain: td, Signer: key, Now: now, TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	iss := &x509ca.Issuer{Cert: got.Cert, Signer: key, Chain: append([]*x509.Certificate{got.Cert}, got.Chain...)}
	leafKey, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509ca.SignX509SVID(now, iss, x509ca.SVIDParams{ID: spiffeid.RequireFromPath(td, "/w"), PublicKey: leafKey.Public(), TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	bundle := x509bundle.FromX509Authorities(td, roots)
	if _, _, err := x509svid.ParseAndVerify(iss.SVIDChain(leaf), bundle, x509svid.WithTime(now)); err != nil {
		t.Fatalf("go-spiffe refuses an SVID under the upstream: %v", err)
	}
	return got
}

func TestGoodUpstreams(t *testing.T) {
	root := mint(t, "root", nil, nil)
	inter := mint(t, "inter", root, func(c *x509.Certificate) { c.MaxPathLen = 1 })
	for _, tc := range []struct {
		name      string
		certs     []*x509.Certificate
		key       crypto.Signer
		roots     []*x509.Certificate
		wantChain int
	}{
		{"root signs directly", certs(root), root.key, nil, 0},
		{"intermediate, root in the cert file", certs(inter, root), inter.key, nil, 1},
		{"intermediate, root in the bundle", certs(inter), inter.key, certs(root), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up, err := upstream.New(tc.certs, tc.key, tc.roots)
			if err != nil {
				t.Fatal(err)
			}
			if err := up.Check(now, td); err != nil {
				t.Fatal(err)
			}
			if rs := up.Roots(); len(rs) != 1 || !rs[0].Equal(root.cert) {
				t.Fatalf("roots = %d certificates, want the root", len(rs))
			}
			got := mintWrit(t, up, certs(root), 24*time.Hour)
			if len(got.Chain) != tc.wantChain || len(got.TrustAnchors) != 1 || !got.TrustAnchors[0].Equal(root.cert) {
				t.Fatalf("chain %d, anchors %d", len(got.Chain), len(got.TrustAnchors))
			}
		})
	}
}

// TestLifetimeCapped: the Writ CA is valid no longer than any upstream
// certificate above it, not only the one that signs it.
func TestLifetimeCapped(t *testing.T) {
	root := mint(t, "root", nil, nil)
	mid := mint(t, "mid", root, func(c *x509.Certificate) { c.NotAfter = now.Add(10 * time.Hour) })
	inter := mint(t, "inter", mid, nil)
	up, err := upstream.New(certs(inter, mid), inter.key, certs(root))
	if err != nil {
		t.Fatal(err)
	}
	if !up.NotAfter().Equal(mid.cert.NotAfter) {
		t.Fatalf("NotAfter = %s, want %s", up.NotAfter(), mid.cert.NotAfter)
	}
	got := mintWrit(t, up, certs(root), 24*time.Hour)
	if got.Cert.NotAfter.After(mid.cert.NotAfter) {
		t.Fatalf("Writ CA valid until %s, beyond the upstream intermediate's %s", got.Cert.NotAfter, mid.cert.NotAfter)
	}
}

func TestBadUpstreams(t *testing.T) {
	root := mint(t, "root", nil, nil)
	other := mint(t, "other root", nil, nil)
	good := mint(t, "inter", root, nil)
	for _, tc := range []struct {
		name string
		// setup returns the upstream's certificate file, key and bundle.
		setup func(t *testing.T) ([]*x509.Certificate, crypto.Signer, []*x509.Certificate)
		want  error
	}{
		{"not a CA", func(t *testing.T) ([]*x509.Certificate, crypto.Signer, []*x509.Certificate) {
			c := mint(t, "leaf", root, func(c *x509.Certificate) { c.IsCA, c.KeyUsage = false, x509.KeyUsageDigitalSignature })
			return certs(c), c.key, certs(root)
		}, upstream.ErrNotCA},
		{"no keyCertSign", func(t *testing.T) ([]*x509.Certificate, crypto.Signer, []*x509.Certificate) {
			c := mint(t, "inter", root, func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageDigitalSignature })
			return certs(c), c.key, certs(root)
		}, upstream.ErrNotCA},
		{"intermediate above is not a CA", func(t *testing.T) ([]*x509.Certificate, crypto.Signer, []*x509.Certificate) {
			mid := mint(t, "mid", root, func(c *x509.Certificate) { c.IsCA = false; c.BasicConstraintsValid = false })
			c := mint(t, "inter", mid, nil)
			return certs(c, mid), c.key, certs(root)
		}, upstream.ErrNotCA},
		{"chains to another root", func(*testing.T) ([]*x509.Certificate, crypto.Signer, []*x509.Certificate) {
			return certs(good), good.key, certs(other)
		}, upstream.ErrUntrusted},
		{"no bundle and no self-signed root", func(*testing.T) ([]*x509.Certificate, crypto.Signer, []*x509.Certificate) {
			return certs(good), good.key, nil
		}, upstream.ErrUntrusted},
		{"intermediates out of order", func(t *testing.T) ([]*x509.Certificate, crypto.Signer, []*x509.Certificate) {
			mid := mint(t, "mid", root, nil)
			c := mint(t, "inter", mid, nil)
			unrelated := mint(t, "unrelated", root, nil)
			return certs(c, unrelated, mid), c.key, certs(root)
		}, upstream.ErrUntrusted},
		{"path length 0 at the upstream intermediate", func(t *testing.T) ([]*x509.Certificate, crypto.Signer, []*x509.Certificate) {
			c := mint(t, "inter", root, func(c *x509.Certificate) { c.MaxPathLen, c.MaxPathLenZero = 0, true })
			return certs(c), c.key, certs(root)
		}, upstream.ErrPathLen},
		{"path length 1 at the root above an intermediate", func(t *testing.T) ([]*x509.Certificate, crypto.Signer, []*x509.Certificate) {
			r := mint(t, "short root", nil, func(c *x509.Certificate) { c.MaxPathLen = 1 })
			c := mint(t, "inter", r, nil)
			return certs(c, r), c.key, nil
		}, upstream.ErrPathLen},
		{"path length 0 at a root that signs directly", func(t *testing.T) ([]*x509.Certificate, crypto.Signer, []*x509.Certificate) {
			r := mint(t, "zero root", nil, func(c *x509.Certificate) { c.MaxPathLen, c.MaxPathLenZero = 0, true })
			return certs(r), r.key, nil
		}, upstream.ErrPathLen},
		{"another trust domain", func(t *testing.T) ([]*x509.Certificate, crypto.Signer, []*x509.Certificate) {
			c := mint(t, "inter", root, func(c *x509.Certificate) { c.URIs = []*url.URL{{Scheme: "spiffe", Host: "other.org"}} })
			return certs(c), c.key, certs(root)
		}, upstream.ErrTrustDomain},
		{"expired", func(t *testing.T) ([]*x509.Certificate, crypto.Signer, []*x509.Certificate) {
			c := mint(t, "inter", root, func(c *x509.Certificate) { c.NotAfter = now.Add(-time.Hour) })
			return certs(c), c.key, certs(root)
		}, upstream.ErrValidity},
		{"root expired", func(t *testing.T) ([]*x509.Certificate, crypto.Signer, []*x509.Certificate) {
			r := mint(t, "old root", nil, func(c *x509.Certificate) { c.NotAfter = now.Add(-time.Hour) })
			c := mint(t, "inter", r, func(c *x509.Certificate) { c.NotBefore = now.Add(-48 * time.Hour) })
			return certs(c), c.key, certs(r)
		}, upstream.ErrValidity},
		{"not yet valid", func(t *testing.T) ([]*x509.Certificate, crypto.Signer, []*x509.Certificate) {
			c := mint(t, "inter", root, func(c *x509.Certificate) { c.NotBefore = now.Add(time.Hour) })
			return certs(c), c.key, certs(root)
		}, upstream.ErrValidity},
		{"key of another certificate", func(*testing.T) ([]*x509.Certificate, crypto.Signer, []*x509.Certificate) {
			return certs(good), root.key, certs(root)
		}, upstream.ErrKeyMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs, key, roots := tc.setup(t)
			up, err := upstream.New(cs, key, roots)
			if err == nil {
				err = up.Check(now, td)
				// MintCA checks too: nothing is signed by a bad upstream.
				k, _ := x509ca.GenerateKey(x509ca.KeyTypeECP256)
				if _, merr := up.MintCA(context.Background(), keymanager.CARequest{TrustDomain: td, Signer: k, Now: now, TTL: time.Hour}); !errors.Is(merr, tc.want) {
					t.Errorf("MintCA = %v, want %v", merr, tc.want)
				}
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			t.Logf("refused: %v", err)
		})
	}
}

func writePEM(t *testing.T, path, typ string, ders ...[]byte) {
	t.Helper()
	var out []byte
	for _, d := range ders {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: d})...)
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestLoadDisk(t *testing.T) {
	root := mint(t, "root", nil, nil)
	inter := mint(t, "inter", root, nil)
	dir := t.TempDir()
	files := upstream.Files{Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem"), Bundle: filepath.Join(dir, "roots.pem")}
	writePEM(t, files.Cert, "CERTIFICATE", inter.cert.Raw)
	writePEM(t, files.Bundle, "CERTIFICATE", root.cert.Raw)
	pkcs8, err := x509.MarshalPKCS8PrivateKey(inter.key)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(inter.key.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		typ string
		der []byte
	}{{"PRIVATE KEY", pkcs8}, {"EC PRIVATE KEY", sec1}} {
		writePEM(t, files.Key, tc.typ, tc.der)
		up, err := upstream.LoadDisk(files)
		if err != nil {
			t.Fatalf("%s: %v", tc.typ, err)
		}
		if err := up.Check(now, td); err != nil {
			t.Fatalf("%s: %v", tc.typ, err)
		}
		mintWrit(t, up, certs(root), time.Hour)
	}

	if err := os.Chmod(files.Key, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := upstream.LoadDisk(files); !errors.Is(err, datadir.ErrPermissions) || !errors.Is(err, upstream.ErrFile) {
		t.Fatalf("group-readable key = %v, want ErrFile and datadir.ErrPermissions", err)
	}
	os.Chmod(files.Key, 0o600)
	for name, f := range map[string]upstream.Files{
		"missing cert":   {Cert: filepath.Join(dir, "nope"), Key: files.Key},
		"key as cert":    {Cert: files.Key, Key: files.Key},
		"cert as key":    {Cert: files.Cert, Key: files.Cert},
		"missing bundle": {Cert: files.Cert, Key: files.Key, Bundle: filepath.Join(dir, "nope")},
	} {
		if _, err := upstream.LoadDisk(f); !errors.Is(err, upstream.ErrFile) {
			t.Errorf("%s: %v, want ErrFile", name, err)
		}
	}
}
