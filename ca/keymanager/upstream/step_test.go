package upstream_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"writ.dev/writ/ca/keymanager/upstream"
	"writ.dev/writ/ca/x509ca"
)

const stepPassword = "provisioner password"

// stepPeer speaks step-ca's protocol on an httptest TLS server: a JWK
// provisioner "writ" whose key is sealed with stepPassword, and a sign
// endpoint that checks the one-time token as step-ca does, then answers
// what sign returns.
type stepPeer struct {
	t     *testing.T
	srv   *httptest.Server
	root  *ca
	inter *ca
	key   *jose.JSONWebKey
	// provisioners, if set, replaces the provisioner list answer.
	provisioners any
	// sign answers a checked sign request; nil: the certificate issue()
	// makes under inter, with chain [cert, inter].
	sign func(w http.ResponseWriter, csr *x509.CertificateRequest)
	used map[string]bool
}

func newStepPeer(t *testing.T) *stepPeer {
	t.Helper()
	root := mint(t, "step root", nil, nil)
	inter := mint(t, "step intermediate", root, func(c *x509.Certificate) { c.MaxPathLen = 1 })
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p := &stepPeer{t: t, root: root, inter: inter, used: map[string]bool{},
		key: &jose.JSONWebKey{Key: ecKey, KeyID: "kid-1", Algorithm: string(jose.ES256), Use: "sig"}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /1.0/provisioners", p.list)
	mux.HandleFunc("POST /1.0/sign", p.signHandler)
	p.srv = httptest.NewTLSServer(mux)
	t.Cleanup(p.srv.Close)
	return p
}

func (p *stepPeer) encryptedKey(password string) string {
	p.t.Helper()
	plain, err := p.key.MarshalJSON()
	if err != nil {
		p.t.Fatal(err)
	}
	enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: jose.PBES2_HS256_A128KW, Key: []byte(password), PBES2Count: 1000},
		(&jose.EncrypterOptions{}).WithContentType("jwk+json"))
	if err != nil {
		p.t.Fatal(err)
	}
	obj, err := enc.Encrypt(plain)
	if err != nil {
		p.t.Fatal(err)
	}
	s, err := obj.CompactSerialize()
	if err != nil {
		p.t.Fatal(err)
	}
	return s
}

func (p *stepPeer) provisioner(typ, name, password string) map[string]any {
	pub := p.key.Public()
	return map[string]any{"type": typ, "name": name, "key": &pub, "encryptedKey": p.encryptedKey(password)}
}

func (p *stepPeer) list(w http.ResponseWriter, r *http.Request) {
	if p.provisioners != nil {
		answer(w, http.StatusOK, p.provisioners)
		return
	}
	// Two pages, as step-ca paginates.
	if r.URL.Query().Get("cursor") == "" {
		answer(w, http.StatusOK, map[string]any{"provisioners": []any{p.provisioner("OIDC", "google", "x")}, "nextCursor": "page2"})
		return
	}
	answer(w, http.StatusOK, map[string]any{"provisioners": []any{p.provisioner("JWK", "writ", stepPassword)}, "nextCursor": ""})
}

func (p *stepPeer) signHandler(w http.ResponseWriter, r *http.Request) {
	var req struct {
		CSR      string `json:"csr"`
		OTT      string `json:"ott"`
		NotAfter string `json:"notAfter"`
	}
	if err := json.Unmarshal(readAll(p.t, r.Body), &req); err != nil {
		p.t.Errorf("sign request: %v", err)
	}
	tok, err := jwt.ParseSigned(req.OTT, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		p.t.Errorf("token: %v", err)
		answer(w, http.StatusUnauthorized, map[string]any{"status": 401, "message": "bad token"})
		return
	}
	if kid := tok.Headers[0].KeyID; kid != p.key.KeyID {
		p.t.Errorf("token kid %q", kid)
	}
	var claims struct {
		jwt.Claims
		SANs []string `json:"sans"`
		SHA  string   `json:"sha"`
	}
	if err := tok.Claims(p.key.Public().Key, &claims); err != nil {
		p.t.Errorf("token signature: %v", err)
	}
	if err := claims.ValidateWithLeeway(jwt.Expected{Issuer: "writ", Subject: "example.org", AnyAudience: jwt.Audience{p.srv.URL + "/1.0/sign"}, Time: now}, 0); err != nil {
		p.t.Errorf("token claims: %v", err)
	}
	if life := claims.Expiry.Time().Sub(claims.NotBefore.Time()); life > 5*time.Minute || life <= 0 {
		p.t.Errorf("token valid for %s", life)
	}
	if len(claims.SANs) != 1 || claims.SANs[0] != "spiffe://example.org" || claims.SHA != fingerprint(p.root.cert) {
		p.t.Errorf("token sans %v sha %s", claims.SANs, claims.SHA)
	}
	if p.used[claims.ID] || claims.ID == "" {
		p.t.Errorf("token ID %q reused or empty", claims.ID)
	}
	p.used[claims.ID] = true
	if na, err := time.Parse(time.RFC3339, req.NotAfter); err != nil || !na.Equal(now.Add(12*time.Hour)) {
		p.t.Errorf("notAfter %q", req.NotAfter)
	}
	csr := csrOf(p.t, req.CSR)
	if csr == nil {
		return
	}
	if len(csr.URIs) != 1 || csr.URIs[0].String() != "spiffe://example.org" || csr.Subject.CommonName != "example.org" {
		p.t.Errorf("CSR names %v %q", csr.URIs, csr.Subject.CommonName)
	}
	if p.sign != nil {
		p.sign(w, csr)
		return
	}
	cert := issue(p.t, csr, p.inter, nil)
	answer(w, http.StatusCreated, map[string]any{"crt": pemOf(cert), "ca": pemOf(p.inter.cert), "certChain": []string{pemOf(cert), pemOf(p.inter.cert)}})
}

func (p *stepPeer) upstream(t *testing.T, password string) *upstream.Step {
	t.Helper()
	s, err := upstream.NewStep(upstream.StepConfig{URL: p.srv.URL + "/", Root: p.root.cert, Provisioner: "writ", Password: []byte(password), Client: p.srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStep(t *testing.T) {
	p := newStepPeer(t)
	got := mintWrit(t, p.upstream(t, stepPassword), certs(p.root), 12*time.Hour)
	if len(got.Chain) != 1 || !got.Chain[0].Equal(p.inter.cert) || len(got.TrustAnchors) != 1 || !got.TrustAnchors[0].Equal(p.root.cert) {
		t.Fatalf("chain %d, anchors %d: want the intermediate, then the root alone", len(got.Chain), len(got.TrustAnchors))
	}
	// A second CA (the next rotation) gets a new token.
	mintWrit(t, p.upstream(t, stepPassword), certs(p.root), 12*time.Hour)
}

func TestStepBadAnswers(t *testing.T) {
	other := mint(t, "other root", nil, nil)
	otherKey, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		password string
		setup    func(p *stepPeer)
		want     error
		text     string
	}{
		{name: "wrong password", password: "guess", want: upstream.ErrConfig, text: "wrong provisioner password"},
		{name: "no such provisioner", setup: func(p *stepPeer) {
			p.provisioners = map[string]any{"provisioners": []any{p.provisioner("JWK", "other", stepPassword)}}
		}, want: upstream.ErrConfig, text: `no provisioner named "writ"`},
		{name: "not a JWK provisioner", setup: func(p *stepPeer) {
			p.provisioners = map[string]any{"provisioners": []any{p.provisioner("X5C", "writ", stepPassword)}}
		}, want: upstream.ErrConfig, text: "not JWK"},
		{name: "leaf certificate", setup: func(p *stepPeer) {
			p.sign = func(w http.ResponseWriter, csr *x509.CertificateRequest) {
				c := issue(t, csr, p.inter, func(c *x509.Certificate) {
					c.IsCA, c.KeyUsage, c.MaxPathLen, c.MaxPathLenZero = false, x509.KeyUsageDigitalSignature, -1, false
				})
				answer(w, http.StatusCreated, map[string]any{"crt": pemOf(c), "certChain": []string{pemOf(c), pemOf(p.inter.cert)}})
			}
		}, want: upstream.ErrNotCA, text: "CA:TRUE"},
		{name: "chain to another root", setup: func(p *stepPeer) {
			p.sign = func(w http.ResponseWriter, csr *x509.CertificateRequest) {
				c := issue(t, csr, other, nil)
				answer(w, http.StatusCreated, map[string]any{"crt": pemOf(c), "certChain": []string{pemOf(c)}})
			}
		}, want: upstream.ErrUntrusted},
		{name: "intermediate path length 0", setup: func(p *stepPeer) {
			p.inter = mint(t, "step intermediate", p.root, func(c *x509.Certificate) { c.MaxPathLen, c.MaxPathLenZero = 0, true })
		}, want: upstream.ErrPathLen, text: "path length 0"},
		{name: "wrong SPIFFE ID", setup: func(p *stepPeer) {
			p.sign = func(w http.ResponseWriter, csr *x509.CertificateRequest) {
				c := issue(t, csr, p.inter, func(c *x509.Certificate) { c.URIs = []*url.URL{mustURL(t, "spiffe://evil.example")} })
				answer(w, http.StatusCreated, map[string]any{"crt": pemOf(c), "certChain": []string{pemOf(c), pemOf(p.inter.cert)}})
			}
		}, want: upstream.ErrTrustDomain, text: "spiffe://evil.example"},
		{name: "another key", setup: func(p *stepPeer) {
			p.sign = func(w http.ResponseWriter, csr *x509.CertificateRequest) {
				c := issue(t, csr, p.inter, func(c *x509.Certificate) { c.PublicKey = otherKey.Public() })
				answer(w, http.StatusCreated, map[string]any{"crt": pemOf(c), "certChain": []string{pemOf(c), pemOf(p.inter.cert)}})
			}
		}, want: upstream.ErrKeyMismatch},
		{name: "expired", setup: func(p *stepPeer) {
			p.sign = func(w http.ResponseWriter, csr *x509.CertificateRequest) {
				c := issue(t, csr, p.inter, func(c *x509.Certificate) { c.NotAfter = now.Add(-time.Second) })
				answer(w, http.StatusCreated, map[string]any{"crt": pemOf(c), "certChain": []string{pemOf(c), pemOf(p.inter.cert)}})
			}
		}, want: upstream.ErrValidity},
		{name: "outlives the intermediate", setup: func(p *stepPeer) {
			p.sign = func(w http.ResponseWriter, csr *x509.CertificateRequest) {
				c := issue(t, csr, p.inter, func(c *x509.Certificate) { c.NotAfter = p.inter.cert.NotAfter.Add(time.Hour) })
				answer(w, http.StatusCreated, map[string]any{"crt": pemOf(c), "certChain": []string{pemOf(c), pemOf(p.inter.cert)}})
			}
		}, want: upstream.ErrValidity, text: "outlives"},
		{name: "refused", setup: func(p *stepPeer) {
			p.sign = func(w http.ResponseWriter, _ *x509.CertificateRequest) {
				answer(w, http.StatusForbidden, map[string]any{"status": 403, "message": "requested duration of 12h is more than the authorized maximum\x1b[31m"})
			}
		}, want: upstream.ErrRejected, text: "authorized maximum?"},
		{name: "server error", setup: func(p *stepPeer) {
			p.sign = func(w http.ResponseWriter, _ *x509.CertificateRequest) {
				answer(w, http.StatusInternalServerError, map[string]any{})
			}
		}, want: upstream.ErrUnavailable},
		{name: "not JSON", setup: func(p *stepPeer) {
			p.sign = func(w http.ResponseWriter, _ *x509.CertificateRequest) {
				w.WriteHeader(http.StatusCreated)
				w.Write([]byte("<html>"))
			}
		}, want: upstream.ErrBadAnswer},
		{name: "no certificate", setup: func(p *stepPeer) {
			p.sign = func(w http.ResponseWriter, _ *x509.CertificateRequest) {
				answer(w, http.StatusCreated, map[string]any{"crt": ""})
			}
		}, want: upstream.ErrBadAnswer},
		{name: "unreachable", setup: func(p *stepPeer) { p.srv.Close() }, want: upstream.ErrUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newStepPeer(t)
			if tc.setup != nil {
				tc.setup(p)
			}
			password := stepPassword
			if tc.password != "" {
				password = tc.password
			}
			_, err := request(t, p.upstream(t, password))
			wantErr(t, err, tc.want)
			if !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("error %q does not say %q", err, tc.text)
			}
		})
	}
}

func TestNewStepConfig(t *testing.T) {
	root := mint(t, "root", nil, nil)
	for _, tc := range []struct {
		name string
		cfg  upstream.StepConfig
	}{
		{"http URL", upstream.StepConfig{URL: "http://ca:9000", Root: root.cert, Provisioner: "p", Password: []byte("x")}},
		{"URL with query", upstream.StepConfig{URL: "https://ca:9000/?a=b", Root: root.cert, Provisioner: "p", Password: []byte("x")}},
		{"no root", upstream.StepConfig{URL: "https://ca:9000", Provisioner: "p", Password: []byte("x")}},
		{"no provisioner", upstream.StepConfig{URL: "https://ca:9000", Root: root.cert, Password: []byte("x")}},
		{"no password", upstream.StepConfig{URL: "https://ca:9000", Root: root.cert, Provisioner: "p"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := upstream.NewStep(tc.cfg)
			wantErr(t, err, upstream.ErrConfig)
		})
	}
}
