package upstream

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"writ.dev/writ/ca/keymanager"
)

// CFSSLConfig configures a cfssl upstream.
type CFSSLConfig struct {
	// URL is the cfssl server's base URL, e.g. http://cfssl.internal:8888.
	URL string
	// AuthKey is the HMAC key of the profile, as hex digits (as in
	// cfssl's auth_keys configuration).
	AuthKey string
	// Profile is the cfssl signing profile; empty means cfssl's default.
	Profile string
	// Roots are the upstream root certificates, published as the trust
	// anchors. The certificate cfssl signs with is either one of them or
	// directly under one of them.
	Roots []*x509.Certificate
	// Client, if set, is the HTTP client used (tests); by default one
	// with the system's roots for an https URL.
	Client *http.Client
}

// CFSSL is an upstream cfssl server: a keymanager.Authority that obtains
// each CA certificate through cfssl's authenticated remote-signing
// endpoint (authsign), as cfssl's own remote signer does.
type CFSSL struct {
	base    *url.URL
	key     []byte
	profile string
	roots   []*x509.Certificate
	client  *http.Client
}

// NewCFSSL returns a cfssl upstream. It does not contact cfssl.
func NewCFSSL(cfg CFSSLConfig) (*CFSSL, error) {
	u, err := url.Parse(cfg.URL)
	switch {
	case err != nil:
		return nil, fmt.Errorf("%w: cfssl URL: %w", ErrConfig, err)
	case (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("%w: cfssl URL %q must be http(s)://host[:port][/path]", ErrConfig, cfg.URL)
	case len(cfg.Roots) == 0:
		return nil, fmt.Errorf("%w: no upstream root certificate for cfssl (--upstream-bundle)", ErrConfig)
	}
	key, err := hex.DecodeString(strings.TrimSpace(cfg.AuthKey))
	if err != nil || len(key) == 0 {
		return nil, fmt.Errorf("%w: the cfssl auth key must be hex digits, as in cfssl's auth_keys", ErrConfig)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	client := cfg.Client
	if client == nil {
		client = &http.Client{Timeout: requestTimeout, CheckRedirect: noRedirects}
	}
	return &CFSSL{base: u, key: key, profile: cfg.Profile, roots: slices.Clone(cfg.Roots), client: client}, nil
}

// Roots returns the upstream roots, the trust anchors published in the
// bundle.
func (c *CFSSL) Roots() []*x509.Certificate { return slices.Clone(c.roots) }

func (c *CFSSL) endpoint(path string) string {
	u := *c.base
	u.Path += path
	return u.String()
}

// cfsslResponse is cfssl's API answer envelope.
type cfsslResponse struct {
	Success bool            `json:"success"`
	Result  json.RawMessage `json:"result"`
	Errors  []struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"errors"`
}

// cfsslMessage extracts the error messages of a cfssl answer.
func cfsslMessage(body []byte) string {
	var r cfsslResponse
	if json.Unmarshal(body, &r) != nil {
		return ""
	}
	var msgs []string
	for _, e := range r.Errors {
		msgs = append(msgs, fmt.Sprintf("%s (code %d)", printable(e.Message), e.Code))
	}
	return strings.Join(msgs, "; ")
}

// call posts body to path and returns the certificate of the result.
func (c *CFSSL) call(ctx context.Context, what, path string, body []byte) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint(path), bytes.NewReader(body))
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrConfig, err)
	}
	req.Header.Set("Content-Type", "application/json")
	var resp cfsslResponse
	if err := exchange(c.client, req, &resp, cfsslMessage); err != nil {
		return "", fmt.Errorf("cfssl %s: %w", what, err)
	}
	if !resp.Success {
		raw, _ := json.Marshal(resp)
		return "", fmt.Errorf("%w: cfssl %s failed: %s", ErrRejected, what, cfsslMessage(raw))
	}
	var result struct {
		Certificate string `json:"certificate"`
	}
	if err := json.Unmarshal(resp.Result, &result); err != nil || result.Certificate == "" {
		return "", fmt.Errorf("%w: cfssl %s answered no certificate", ErrBadAnswer, what)
	}
	return result.Certificate, nil
}

// MintCA asks cfssl to sign a CA certificate for req.Signer's key and
// verifies the answer. cfssl decides the lifetime (the profile's expiry)
// and, for CA certificates, drops every SAN: the certificate does not
// carry the trust domain's SPIFFE ID, which X509-SVID allows for signing
// certificates.
func (c *CFSSL) MintCA(ctx context.Context, req keymanager.CARequest) (*keymanager.CA, error) {
	csr, err := newCSR(req.TrustDomain, req.Signer)
	if err != nil {
		return nil, err
	}
	signReq, err := json.Marshal(map[string]any{
		"certificate_request": string(csr),
		"hosts":               []string{req.TrustDomain.IDString()},
		"profile":             c.profile,
	})
	if err != nil {
		return nil, err
	}
	mac := hmac.New(sha256.New, c.key)
	mac.Write(signReq)
	body, err := json.Marshal(struct {
		Token   []byte `json:"token"`
		Request []byte `json:"request"`
	}{Token: mac.Sum(nil), Request: signReq})
	if err != nil {
		return nil, err
	}
	pemCert, err := c.call(ctx, "authsign", "/api/v1/cfssl/authsign", body)
	if err != nil {
		return nil, err
	}
	certs, err := parseCerts("cfssl certificate", []byte(pemCert))
	if err != nil {
		return nil, err
	}
	cert := certs[0]
	// The signer's own certificate completes the chain unless it is a root.
	var chain []*x509.Certificate
	if !slices.ContainsFunc(c.roots, func(r *x509.Certificate) bool {
		return bytes.Equal(cert.RawIssuer, r.RawSubject) && cert.CheckSignatureFrom(r) == nil
	}) {
		info, err := json.Marshal(map[string]string{"label": "", "profile": c.profile})
		if err != nil {
			return nil, err
		}
		pemSigner, err := c.call(ctx, "info", "/api/v1/cfssl/info", info)
		if err != nil {
			return nil, err
		}
		if chain, err = parseCerts("cfssl signer certificate", []byte(pemSigner)); err != nil {
			return nil, err
		}
	}
	if err := checkIssued(req.Now, req.TrustDomain, req.Signer.Public(), cert, chain, c.roots); err != nil {
		return nil, err
	}
	chain = slices.DeleteFunc(chain, func(x *x509.Certificate) bool { return slices.ContainsFunc(c.roots, x.Equal) })
	return &keymanager.CA{Cert: cert, Chain: chain, TrustAnchors: c.Roots()}, nil
}
