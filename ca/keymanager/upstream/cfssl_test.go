package upstream_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"writ.dev/writ/ca/keymanager/upstream"
)

const cfsslKey = "00112233445566778899aabbccddeeff"

// cfsslPeer speaks cfssl's authsign and info protocol on an httptest
// server: it checks the HMAC token as cfssl's standard auth provider does
// and signs with signer (the intermediate by default).
type cfsslPeer struct {
	t      *testing.T
	srv    *httptest.Server
	root   *ca
	signer *ca
	// sign, if set, answers a checked request instead.
	sign  func(w http.ResponseWriter, csr *x509.CertificateRequest)
	infos int
}

func newCFSSLPeer(t *testing.T) *cfsslPeer {
	t.Helper()
	root := mint(t, "cfssl root", nil, nil)
	p := &cfsslPeer{t: t, root: root, signer: mint(t, "cfssl intermediate", root, func(c *x509.Certificate) { c.MaxPathLen = 1 })}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/cfssl/authsign", p.authsign)
	mux.HandleFunc("POST /api/v1/cfssl/info", p.info)
	p.srv = httptest.NewServer(mux)
	t.Cleanup(p.srv.Close)
	return p
}

func ok(w http.ResponseWriter, result any) {
	answer(w, http.StatusOK, map[string]any{"success": true, "result": result, "errors": []any{}, "messages": []any{}})
}

func fail(w http.ResponseWriter, code int, msg string) {
	answer(w, code, map[string]any{"success": false, "result": nil, "errors": []any{map[string]any{"code": code, "message": msg}}, "messages": []any{}})
}

func (p *cfsslPeer) authsign(w http.ResponseWriter, r *http.Request) {
	var areq struct {
		Token   []byte `json:"token"`
		Request []byte `json:"request"`
	}
	if err := json.Unmarshal(readAll(p.t, r.Body), &areq); err != nil {
		p.t.Errorf("authsign request: %v", err)
	}
	key, _ := hex.DecodeString(cfsslKey)
	mac := hmac.New(sha256.New, key)
	mac.Write(areq.Request)
	if !hmac.Equal(mac.Sum(nil), areq.Token) {
		fail(w, http.StatusBadRequest, "invalid token")
		return
	}
	var req struct {
		CSR     string   `json:"certificate_request"`
		Hosts   []string `json:"hosts"`
		Profile string   `json:"profile"`
	}
	if err := json.Unmarshal(areq.Request, &req); err != nil {
		p.t.Errorf("sign request: %v", err)
	}
	if req.Profile != "intermediate" || len(req.Hosts) != 1 || req.Hosts[0] != "spiffe://example.org" {
		p.t.Errorf("profile %q hosts %v", req.Profile, req.Hosts)
	}
	csr := csrOf(p.t, req.CSR)
	if csr == nil {
		return
	}
	if p.sign != nil {
		p.sign(w, csr)
		return
	}
	// cfssl drops SANs from CA certificates.
	ok(w, map[string]any{"certificate": pemOf(issue(p.t, csr, p.signer, func(c *x509.Certificate) { c.URIs = nil }))})
}

func (p *cfsslPeer) info(w http.ResponseWriter, r *http.Request) {
	p.infos++
	var req struct {
		Profile string `json:"profile"`
	}
	if err := json.Unmarshal(readAll(p.t, r.Body), &req); err != nil || req.Profile != "intermediate" {
		p.t.Errorf("info request for profile %q: %v", req.Profile, err)
	}
	ok(w, map[string]any{"certificate": pemOf(p.signer.cert), "usages": []string{"cert sign"}, "expiry": "8760h"})
}

func (p *cfsslPeer) upstream(t *testing.T, key string) *upstream.CFSSL {
	t.Helper()
	c, err := upstream.NewCFSSL(upstream.CFSSLConfig{URL: p.srv.URL, AuthKey: key, Profile: "intermediate", Roots: certs(p.root)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCFSSL(t *testing.T) {
	t.Run("intermediate", func(t *testing.T) {
		p := newCFSSLPeer(t)
		got := mintWrit(t, p.upstream(t, cfsslKey+"\n"), certs(p.root), 12*time.Hour)
		if len(got.Chain) != 1 || !got.Chain[0].Equal(p.signer.cert) || len(got.TrustAnchors) != 1 || !got.TrustAnchors[0].Equal(p.root.cert) {
			t.Fatalf("chain %d, anchors %d: want the cfssl signer, then the root alone", len(got.Chain), len(got.TrustAnchors))
		}
		if len(got.Cert.URIs) != 0 || p.infos != 1 {
			t.Fatalf("CA URIs %v, info requests %d", got.Cert.URIs, p.infos)
		}
	})
	t.Run("root signs", func(t *testing.T) {
		p := newCFSSLPeer(t)
		p.signer = p.root
		got := mintWrit(t, p.upstream(t, cfsslKey), certs(p.root), 12*time.Hour)
		if len(got.Chain) != 0 || p.infos != 0 {
			t.Fatalf("chain of %d certificates, %d info requests; want none", len(got.Chain), p.infos)
		}
	})
}

func TestCFSSLBadAnswers(t *testing.T) {
	other := mint(t, "other root", nil, nil)
	for _, tc := range []struct {
		name  string
		key   string
		setup func(p *cfsslPeer)
		want  error
		text  string
	}{
		{name: "wrong auth key", key: "ffeeddccbbaa99887766554433221100", want: upstream.ErrRejected, text: "invalid token (code 400)"},
		{name: "not a CA", setup: func(p *cfsslPeer) {
			p.sign = func(w http.ResponseWriter, csr *x509.CertificateRequest) {
				ok(w, map[string]any{"certificate": pemOf(issue(t, csr, p.signer, func(c *x509.Certificate) {
					c.IsCA, c.KeyUsage, c.MaxPathLen, c.MaxPathLenZero = false, x509.KeyUsageDigitalSignature, -1, false
				}))})
			}
		}, want: upstream.ErrNotCA},
		{name: "chain to another root", setup: func(p *cfsslPeer) { p.signer = mint(t, "stray", other, nil) }, want: upstream.ErrUntrusted},
		{name: "signer path length 0", setup: func(p *cfsslPeer) {
			p.signer = mint(t, "cfssl intermediate", p.root, func(c *x509.Certificate) { c.MaxPathLen, c.MaxPathLenZero = 0, true })
		}, want: upstream.ErrPathLen},
		{name: "success false", setup: func(p *cfsslPeer) {
			p.sign = func(w http.ResponseWriter, _ *x509.CertificateRequest) { fail(w, http.StatusOK, "policy violation") }
		}, want: upstream.ErrRejected, text: "policy violation"},
		{name: "no certificate", setup: func(p *cfsslPeer) {
			p.sign = func(w http.ResponseWriter, _ *x509.CertificateRequest) { ok(w, map[string]any{}) }
		}, want: upstream.ErrBadAnswer},
		{name: "server error", setup: func(p *cfsslPeer) {
			p.sign = func(w http.ResponseWriter, _ *x509.CertificateRequest) {
				fail(w, http.StatusServiceUnavailable, "down")
			}
		}, want: upstream.ErrUnavailable},
		{name: "unreachable", setup: func(p *cfsslPeer) { p.srv.Close() }, want: upstream.ErrUnavailable},
		{name: "redirect not followed", setup: func(p *cfsslPeer) {
			p.sign = func(w http.ResponseWriter, _ *x509.CertificateRequest) {
				w.Header().Set("Location", "/api/v1/cfssl/info")
				w.WriteHeader(http.StatusTemporaryRedirect)
			}
		}, want: upstream.ErrRejected, text: "307"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newCFSSLPeer(t)
			if tc.setup != nil {
				tc.setup(p)
			}
			key := cfsslKey
			if tc.key != "" {
				key = tc.key
			}
			_, err := request(t, p.upstream(t, key))
			wantErr(t, err, tc.want)
			if !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("error %q does not say %q", err, tc.text)
			}
		})
	}
}

func TestNewCFSSLConfig(t *testing.T) {
	root := mint(t, "root", nil, nil)
	for _, tc := range []struct {
		name string
		cfg  upstream.CFSSLConfig
	}{
		{"bad scheme", upstream.CFSSLConfig{URL: "ftp://cfssl", AuthKey: cfsslKey, Roots: certs(root)}},
		{"no roots", upstream.CFSSLConfig{URL: "http://cfssl", AuthKey: cfsslKey}},
		{"key not hex", upstream.CFSSLConfig{URL: "http://cfssl", AuthKey: "secret", Roots: certs(root)}},
		{"empty key", upstream.CFSSLConfig{URL: "http://cfssl", Roots: certs(root)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := upstream.NewCFSSL(tc.cfg)
			wantErr(t, err, upstream.ErrConfig)
		})
	}
}
