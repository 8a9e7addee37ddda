package upstream

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Errors of the remote upstreams (step-ca, cfssl); every failure wraps one
// of them, or one of the chain errors above (ErrNotCA, ErrUntrusted,
// ErrPathLen, ErrTrustDomain, ErrValidity, ErrKeyMismatch) when the
// upstream's answer is refused.
var (
	// ErrUnavailable: the upstream could not be reached or failed (a
	// network error, a timeout, an HTTP 5xx). Worth retrying.
	ErrUnavailable = errors.New("upstream: upstream unavailable")
	// ErrRejected: the upstream refused the request (an HTTP 4xx, or a
	// cfssl answer without success); its message follows.
	ErrRejected = errors.New("upstream: upstream refused the request")
	// ErrBadAnswer: the upstream's answer is malformed (not JSON, no
	// certificate, a certificate that does not parse).
	ErrBadAnswer = errors.New("upstream: malformed answer from the upstream")
	// ErrConfig: the upstream's configuration is unusable (a bad URL, no
	// such provisioner, a wrong provisioner password, a bad auth key).
	ErrConfig = errors.New("upstream: bad upstream configuration")
)

// maxAnswer bounds what is read of an upstream's HTTP answer.
const maxAnswer = 1 << 20

// requestTimeout bounds one HTTP exchange with a remote upstream.
const requestTimeout = 30 * time.Second

// noRedirects makes an HTTP client return a redirect as the answer: a
// request (with its token) goes only to the configured URL.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// newCSR makes the certificate request for a Writ CA of trust domain td,
// signed by signer (proof of possession): subject CN the trust domain
// name, URI SAN the trust domain's SPIFFE ID.
func newCSR(td spiffeid.TrustDomain, signer crypto.Signer) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: td.Name()},
		URIs:    []*url.URL{td.ID().URL()},
	}, signer)
	if err != nil {
		return nil, fmt.Errorf("make CA certificate request: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// parseCerts parses the PEM certificates of an upstream answer.
func parseCerts(what string, data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: %s: unexpected PEM block %q", ErrBadAnswer, what, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrBadAnswer, what, err)
		}
		certs = append(certs, c)
	}
	if len(bytes.TrimSpace(data)) != 0 {
		return nil, fmt.Errorf("%w: %s: data that is not PEM", ErrBadAnswer, what)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: %s holds no certificate", ErrBadAnswer, what)
	}
	return certs, nil
}

// exchange sends req and decodes a 2xx JSON answer into out. On another
// status it returns ErrUnavailable (5xx) or ErrRejected (other), with the
// message msg extracts from the body, if any.
func exchange(client *http.Client, req *http.Request, out any, msg func([]byte) string) error {
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return fmt.Errorf("%w: read answer of %s: %w", ErrUnavailable, req.URL.Path, err)
	}
	if len(body) > maxAnswer {
		return fmt.Errorf("%w: answer of %s larger than %d bytes", ErrBadAnswer, req.URL.Path, maxAnswer)
	}
	if resp.StatusCode/100 != 2 {
		kind := ErrRejected
		if resp.StatusCode >= 500 {
			kind = ErrUnavailable
		}
		detail := ""
		if m := msg(body); m != "" {
			detail = ": " + m
		}
		return fmt.Errorf("%w: %s answered %s%s", kind, req.URL.Path, resp.Status, detail)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrBadAnswer, req.URL.Path, err)
	}
	return nil
}

// printable returns s cut to a short length with control characters
// replaced, for an upstream's message in an error.
func printable(s string) string {
	const limit = 200
	r := []rune(s)
	if len(r) > limit {
		r = append(r[:limit], '…')
	}
	for i, c := range r {
		if c < 0x20 || c == 0x7f {
			r[i] = '?'
		}
	}
	return string(r)
}

// checkIssued verifies, at now, a CA certificate an upstream issued for
// the key pub of a Writ CA of trust domain td: cert must be a signing CA
// for pub naming no other SPIFFE ID than td's, chain (its issuer first,
// then each issuer's issuer, up to but not including a root) must be
// signing CAs whose path length leaves room for cert, cert must verify
// through chain to one of roots, and it must not outlive any of them.
func checkIssued(now time.Time, td spiffeid.TrustDomain, pub crypto.PublicKey, cert *x509.Certificate, chain, roots []*x509.Certificate) error {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil || !bytes.Equal(der, cert.RawSubjectPublicKeyInfo) {
		return fmt.Errorf("%w: the upstream issued %s for another key", ErrKeyMismatch, name(cert))
	}
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return fmt.Errorf("%w: the upstream issued %s without the CA:TRUE basic constraint (configure the upstream to issue CA certificates)", ErrNotCA, name(cert))
	}
	if cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("%w: the upstream issued %s without the keyCertSign key usage", ErrNotCA, name(cert))
	}
	for _, u := range cert.URIs {
		if u.String() != td.IDString() {
			return fmt.Errorf("%w: the upstream issued %s naming %s, not %s", ErrTrustDomain, name(cert), printable(u.String()), td.IDString())
		}
	}
	// Roots sent along are dropped: they are anchors, not intermediates.
	chain = slices.DeleteFunc(slices.Clone(chain), func(c *x509.Certificate) bool { return slices.ContainsFunc(roots, c.Equal) })
	for i, c := range append([]*x509.Certificate{cert}, chain...) {
		role := "upstream intermediate"
		if i == 0 {
			role = "issued CA certificate"
		}
		switch {
		case now.Before(c.NotBefore):
			return fmt.Errorf("%w: %s %s is not valid before %s", ErrValidity, role, name(c), c.NotBefore.UTC().Format(time.RFC3339))
		case !now.Before(c.NotAfter):
			return fmt.Errorf("%w: %s %s expired at %s", ErrValidity, role, name(c), c.NotAfter.UTC().Format(time.RFC3339))
		}
		if i == 0 {
			continue
		}
		switch {
		case cert.NotAfter.After(c.NotAfter):
			return fmt.Errorf("%w: issued CA certificate %s outlives %s %s (%s after %s)", ErrValidity, name(cert), role, name(c), cert.NotAfter.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))
		case !c.BasicConstraintsValid || !c.IsCA:
			return fmt.Errorf("%w: %s %s has no CA:TRUE basic constraint", ErrNotCA, role, name(c))
		case c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageCertSign == 0:
			return fmt.Errorf("%w: %s %s lacks the keyCertSign key usage", ErrNotCA, role, name(c))
		// Below chain[i-1]: i-1 intermediates, Writ's CA, then leaves.
		case c.MaxPathLen >= 0 && c.MaxPathLen < i:
			return fmt.Errorf("%w: %s %s has path length %d; it needs at least %d (Writ's CA signs below it)", ErrPathLen, role, name(c), c.MaxPathLen, i)
		}
		for _, u := range c.URIs {
			if u.Scheme == "spiffe" && u.Host != td.Name() {
				return fmt.Errorf("%w: %s %s names %s, not trust domain %s", ErrTrustDomain, role, name(c), printable(u.String()), td.Name())
			}
		}
	}
	rootPool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	for _, c := range chain {
		inter.AddCert(c)
	}
	paths, err := cert.Verify(x509.VerifyOptions{Roots: rootPool, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return fmt.Errorf("%w: the issued CA certificate %s: %w", ErrUntrusted, name(cert), err)
	}
	// The root's own path length must leave room for the intermediates
	// below it and Writ's CA.
	for _, p := range paths {
		root := p[len(p)-1]
		if cert.NotAfter.After(root.NotAfter) {
			return fmt.Errorf("%w: issued CA certificate %s outlives upstream root %s", ErrValidity, name(cert), name(root))
		}
		if below := len(p) - 1; root.MaxPathLen >= 0 && root.BasicConstraintsValid && root.MaxPathLen < below && len(p) > 1 {
			return fmt.Errorf("%w: upstream root %s has path length %d; it needs at least %d (Writ's CA signs below it)", ErrPathLen, name(root), root.MaxPathLen, below)
		}
	}
	return nil
}
