package upstream

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"writ.dev/writ/ca/keymanager"
)

// tokenLifetime is how long a one-time token minted for step-ca is valid.
const tokenLifetime = 5 * time.Minute

// StepConfig configures a step-ca upstream.
type StepConfig struct {
	// URL is the step-ca's base URL, e.g. https://ca.example.org:9000.
	URL string
	// Root is step-ca's root certificate: the trust anchor published in
	// the bundle, and the only root its TLS certificate is checked
	// against.
	Root *x509.Certificate
	// Provisioner is the name of a JWK provisioner of the step-ca, and
	// Password the password its encrypted key was sealed with.
	Provisioner string
	Password    []byte
	// Client, if set, is the HTTP client used instead of one that trusts
	// only Root (tests).
	Client *http.Client
}

// Step is an upstream step-ca (smallstep/certificates): a
// keymanager.Authority that obtains each CA certificate with a one-time
// token from a JWK provisioner, as the step CLI does.
type Step struct {
	base        *url.URL
	root        *x509.Certificate
	fingerprint string
	provisioner string
	password    []byte
	client      *http.Client
}

// NewStep returns a step-ca upstream. It does not contact the step-ca.
func NewStep(cfg StepConfig) (*Step, error) {
	u, err := url.Parse(cfg.URL)
	switch {
	case err != nil:
		return nil, fmt.Errorf("%w: step-ca URL: %w", ErrConfig, err)
	case u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("%w: step-ca URL %q must be https://host[:port][/path]", ErrConfig, cfg.URL)
	case cfg.Root == nil:
		return nil, fmt.Errorf("%w: no step-ca root certificate", ErrConfig)
	case cfg.Provisioner == "":
		return nil, fmt.Errorf("%w: no step-ca provisioner name", ErrConfig)
	case len(cfg.Password) == 0:
		return nil, fmt.Errorf("%w: empty step-ca provisioner password", ErrConfig)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	client := cfg.Client
	if client == nil {
		pool := x509.NewCertPool()
		pool.AddCert(cfg.Root)
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		client = &http.Client{Transport: t, Timeout: requestTimeout, CheckRedirect: noRedirects}
	}
	sum := sha256.Sum256(cfg.Root.Raw)
	return &Step{
		base:        u,
		root:        cfg.Root,
		fingerprint: hex.EncodeToString(sum[:]),
		provisioner: cfg.Provisioner,
		password:    slices.Clone(cfg.Password),
		client:      client,
	}, nil
}

// Roots returns step-ca's root, the trust anchor published in the bundle.
func (s *Step) Roots() []*x509.Certificate { return []*x509.Certificate{s.root} }

func (s *Step) endpoint(path string) string {
	u := *s.base
	u.Path += path
	return u.String()
}

// stepProvisioner is the part of a step-ca provisioner Writ reads.
type stepProvisioner struct {
	Type         string `json:"type"`
	Name         string `json:"name"`
	EncryptedKey string `json:"encryptedKey"`
}

// stepMessage extracts the message of a step-ca error answer.
func stepMessage(body []byte) string {
	var e struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &e) != nil {
		return ""
	}
	return printable(e.Message)
}

// provisionerKey finds the JWK provisioner and decrypts its key.
func (s *Step) provisionerKey(ctx context.Context) (*jose.JSONWebKey, error) {
	cursor := ""
	for range 100 {
		u := s.endpoint("/1.0/provisioners")
		if cursor != "" {
			u += "?cursor=" + url.QueryEscape(cursor)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrConfig, err)
		}
		var list struct {
			Provisioners []stepProvisioner `json:"provisioners"`
			NextCursor   string            `json:"nextCursor"`
		}
		if err := exchange(s.client, req, &list, stepMessage); err != nil {
			return nil, fmt.Errorf("list step-ca provisioners: %w", err)
		}
		for _, p := range list.Provisioners {
			if p.Name != s.provisioner {
				continue
			}
			if p.Type != "JWK" {
				return nil, fmt.Errorf("%w: step-ca provisioner %q is of type %s, not JWK", ErrConfig, printable(p.Name), printable(p.Type))
			}
			if p.EncryptedKey == "" {
				return nil, fmt.Errorf("%w: step-ca provisioner %q publishes no encrypted key", ErrConfig, printable(p.Name))
			}
			return s.decrypt(p.EncryptedKey)
		}
		if list.NextCursor == "" || list.NextCursor == cursor {
			break
		}
		cursor = list.NextCursor
	}
	return nil, fmt.Errorf("%w: step-ca has no provisioner named %q", ErrConfig, printable(s.provisioner))
}

// decrypt opens the provisioner's encrypted key (a JWE sealed with a
// password: PBES2 key wrapping, AES-GCM content encryption).
func (s *Step) decrypt(encrypted string) (*jose.JSONWebKey, error) {
	jwe, err := jose.ParseEncrypted(encrypted,
		[]jose.KeyAlgorithm{jose.PBES2_HS256_A128KW, jose.PBES2_HS384_A192KW, jose.PBES2_HS512_A256KW},
		[]jose.ContentEncryption{jose.A128GCM, jose.A192GCM, jose.A256GCM})
	if err != nil {
		return nil, fmt.Errorf("%w: step-ca provisioner %q: encrypted key: %w", ErrBadAnswer, printable(s.provisioner), err)
	}
	plain, err := jwe.Decrypt(s.password)
	if err != nil {
		return nil, fmt.Errorf("%w: cannot decrypt the key of step-ca provisioner %q: wrong provisioner password?", ErrConfig, printable(s.provisioner))
	}
	var key jose.JSONWebKey
	if err := key.UnmarshalJSON(plain); err != nil {
		return nil, fmt.Errorf("%w: step-ca provisioner %q: decrypted key: %w", ErrBadAnswer, printable(s.provisioner), err)
	}
	if key.IsPublic() || !key.Valid() {
		return nil, fmt.Errorf("%w: step-ca provisioner %q: decrypted key is not a private key", ErrBadAnswer, printable(s.provisioner))
	}
	return &key, nil
}

// token mints the one-time token authorising a certificate for subject
// with SANs sans.
func (s *Step) token(key *jose.JSONWebKey, now time.Time, subject string, sans []string) (string, error) {
	alg := jose.SignatureAlgorithm(key.Algorithm)
	if alg == "" {
		return "", fmt.Errorf("%w: step-ca provisioner %q: key names no algorithm", ErrBadAnswer, printable(s.provisioner))
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key.Key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", key.KeyID))
	if err != nil {
		return "", fmt.Errorf("%w: step-ca provisioner %q: %w", ErrBadAnswer, printable(s.provisioner), err)
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return "", err
	}
	claims := struct {
		jwt.Claims
		SANs []string `json:"sans"`
		SHA  string   `json:"sha"`
	}{
		Claims: jwt.Claims{
			Issuer:    s.provisioner,
			Subject:   subject,
			Audience:  jwt.Audience{s.endpoint("/1.0/sign")},
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now),
			Expiry:    jwt.NewNumericDate(now.Add(tokenLifetime)),
			ID:        hex.EncodeToString(id),
		},
		SANs: sans,
		SHA:  s.fingerprint,
	}
	return jwt.Signed(signer).Claims(claims).Serialize()
}

// MintCA asks step-ca to sign a CA certificate for req.Signer's key and
// verifies the answer.
func (s *Step) MintCA(ctx context.Context, req keymanager.CARequest) (*keymanager.CA, error) {
	key, err := s.provisionerKey(ctx)
	if err != nil {
		return nil, err
	}
	csr, err := newCSR(req.TrustDomain, req.Signer)
	if err != nil {
		return nil, err
	}
	ott, err := s.token(key, req.Now, req.TrustDomain.Name(), []string{req.TrustDomain.IDString()})
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(map[string]string{
		"csr":      string(csr),
		"ott":      ott,
		"notAfter": req.Now.Add(req.TTL).UTC().Format(time.RFC3339),
	})
	if err != nil {
		return nil, err
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, s.endpoint("/1.0/sign"), bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	var answer struct {
		Crt       string   `json:"crt"`
		CA        string   `json:"ca"`
		CertChain []string `json:"certChain"`
	}
	if err := exchange(s.client, hreq, &answer, stepMessage); err != nil {
		return nil, fmt.Errorf("step-ca sign: %w", err)
	}
	certs, err := parseCerts("step-ca certificate", []byte(answer.Crt))
	if err != nil {
		return nil, err
	}
	cert := certs[0]
	var chain []*x509.Certificate
	if len(answer.CertChain) > 0 {
		for _, p := range answer.CertChain {
			cs, err := parseCerts("step-ca certificate chain", []byte(p))
			if err != nil {
				return nil, err
			}
			chain = append(chain, cs...)
		}
		if !chain[0].Equal(cert) {
			return nil, fmt.Errorf("%w: step-ca certificate chain does not start with the issued certificate", ErrBadAnswer)
		}
		chain = chain[1:]
	} else if answer.CA != "" {
		if chain, err = parseCerts("step-ca intermediate", []byte(answer.CA)); err != nil {
			return nil, err
		}
	}
	if err := checkIssued(req.Now, req.TrustDomain, req.Signer.Public(), cert, chain, s.Roots()); err != nil {
		return nil, err
	}
	chain = slices.DeleteFunc(chain, s.root.Equal)
	return &keymanager.CA{Cert: cert, Chain: chain, TrustAnchors: s.Roots()}, nil
}
