package x509pop

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // a fingerprint, as SPIRE's x509pop, not a security boundary
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"text/template"
	"text/template/parse"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/attest"
	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/entry"
)

// Type is the attestation type's name on the wire, in agent records and
// as the selector type.
const Type = "x509pop"

// DefaultPathTemplate makes agent IDs spiffe://<td>/writ/agent/x509pop/<sha1>.
const DefaultPathTemplate = "{{ .PluginName }}/{{ .Fingerprint }}"

// maxChain bounds the certificates a payload may carry.
const maxChain = 8

// MaxRSAKeyBits bounds the RSA keys of the certificates of a payload, as
// crypto/tls bounds those of peers: the agent chooses the intermediates
// before it has proved anything, and verifying a signature with an RSA
// key costs the square of its size (seconds for the largest a payload
// can hold).
const MaxRSAKeyBits = 8192

// signedPrefix starts every message the agent signs, so that a signature
// made for x509pop means nothing elsewhere.
const signedPrefix = "writ x509pop v1 challenge\x00"

// payload is what the agent sends first.
type payload struct {
	// Chain is the agent's certificate chain, leaf first (DER).
	Chain [][]byte `json:"chain"`
}

// TemplateData is what an agent path template sees.
type TemplateData struct {
	// PluginName is "x509pop".
	PluginName string
	// TrustDomain is the trust domain's name.
	TrustDomain string
	// Fingerprint is the leaf certificate's SHA-1, lowercase hex.
	Fingerprint string
	// Subject is the leaf's subject: {{ .Subject.CommonName }},
	// {{ index .Subject.OrganizationalUnit 0 }}, ...
	Subject pkix.Name
	// SerialNumberHex is the leaf's serial number, lowercase hex.
	SerialNumberHex string
}

// ParsePathTemplate parses an agent path template (DefaultPathTemplate
// if s is empty). Missing keys are errors, not "<no value>". What an
// action prints (a value from the certificate) may not hold '/': it is
// at most one path segment, so that a subject field cannot add segments
// and name another node's agent ID. Slashes belong in the template's
// text.
func ParsePathTemplate(s string) (*template.Template, error) {
	if s == "" {
		s = DefaultPathTemplate
	}
	t, err := template.New("x509pop-agent-path").Option("missingkey=error").Funcs(template.FuncMap{valueFunc: pathValue}).Parse(s)
	if err != nil {
		return nil, fmt.Errorf("x509pop: agent path template: %w", err)
	}
	for _, tt := range t.Templates() {
		if tt.Tree != nil {
			checkValues(tt.Tree.Root)
		}
	}
	return t, nil
}

// valueFunc is the function ParsePathTemplate ends every printing action
// with.
const valueFunc = "writAgentPathValue"

// pathValue is what an action of a path template prints: v, if it holds
// no '/'. The error does not quote the value.
func pathValue(v any) (string, error) {
	s := fmt.Sprint(v)
	if strings.Contains(s, "/") {
		return "", errors.New("a certificate value holds '/': each value must stay within one path segment")
	}
	return s, nil
}

// checkValues ends the pipeline of every action under n that prints
// with valueFunc (as html/template adds its escapers).
func checkValues(n parse.Node) {
	switch n := n.(type) {
	case *parse.ListNode:
		if n == nil {
			return
		}
		for _, c := range n.Nodes {
			checkValues(c)
		}
	case *parse.ActionNode:
		if len(n.Pipe.Decl) == 0 {
			n.Pipe.Cmds = append(n.Pipe.Cmds, &parse.CommandNode{
				NodeType: parse.NodeCommand,
				Pos:      n.Pos,
				Args:     []parse.Node{parse.NewIdentifier(valueFunc).SetTree(nil).SetPos(n.Pos)},
			})
		}
	case *parse.IfNode:
		checkValues(n.List)
		checkValues(n.ElseList)
	case *parse.RangeNode:
		checkValues(n.List)
		checkValues(n.ElseList)
	case *parse.WithNode:
		checkValues(n.List)
		checkValues(n.ElseList)
	}
}

// Config configures a Verifier.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	// Roots returns the CA certificates node certificates must chain to;
	// it is called at every attestation, so that a reloaded bundle
	// applies at once. Required.
	Roots func() []*x509.Certificate
	// PathTemplate makes the path under /writ/agent/ of the agent ID:
	// one ParsePathTemplate returned (ParsePathTemplate("") if nil).
	PathTemplate *template.Template
	// Clock is the time certificates are checked at. Required.
	Clock clock.Clock
}

// Verifier is the server half of x509pop.
type Verifier struct {
	cfg Config
}

// NewVerifier checks cfg and returns a Verifier.
func NewVerifier(cfg Config) (*Verifier, error) {
	if cfg.TrustDomain.IsZero() || cfg.Roots == nil || cfg.Clock == nil {
		return nil, errors.New("x509pop: trust domain, roots and clock are required")
	}
	if cfg.PathTemplate == nil {
		t, err := ParsePathTemplate("")
		if err != nil {
			return nil, err
		}
		cfg.PathTemplate = t
	}
	return &Verifier{cfg: cfg}, nil
}

// Type returns "x509pop".
func (v *Verifier) Type() string { return Type }

// Attest verifies the agent's certificate chain, challenges it to sign a
// fresh nonce with the leaf's key and returns its agent ID and node
// selectors.
func (v *Verifier) Attest(ctx context.Context, raw []byte, challenge attest.Challenger) (*attest.Result, error) {
	var p payload
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("%w: %w", attest.ErrInvalidPayload, err)
	}
	if len(p.Chain) == 0 || len(p.Chain) > maxChain {
		return nil, fmt.Errorf("%w: %d certificates (want 1 to %d)", attest.ErrInvalidPayload, len(p.Chain), maxChain)
	}
	certs := make([]*x509.Certificate, len(p.Chain))
	for i, der := range p.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%w: certificate %d: %w", attest.ErrInvalidPayload, i, err)
		}
		if k, ok := c.PublicKey.(*rsa.PublicKey); ok && k.N.BitLen() > MaxRSAKeyBits {
			return nil, fmt.Errorf("%w: certificate %d: RSA key of %d bits (at most %d)", attest.ErrInvalidPayload, i, k.N.BitLen(), MaxRSAKeyBits)
		}
		certs[i] = c
	}
	leaf := certs[0]
	chain, err := v.verify(leaf, certs[1:])
	if err != nil {
		return nil, err
	}

	nonce := attest.NewNonce()
	sig, err := challenge(ctx, nonce)
	if err != nil {
		return nil, err
	}
	if err := verifySignature(leaf.PublicKey, nonce, sig); err != nil {
		return nil, err
	}

	fp := fingerprint(leaf.Raw)
	var path strings.Builder
	data := TemplateData{
		PluginName:      Type,
		TrustDomain:     v.cfg.TrustDomain.Name(),
		Fingerprint:     fp,
		Subject:         leaf.Subject,
		SerialNumberHex: leaf.SerialNumber.Text(16),
	}
	if err := v.cfg.PathTemplate.Execute(&path, data); err != nil {
		return nil, fmt.Errorf("%w: template: %w", attest.ErrBadAgentID, err)
	}
	id, err := attest.AgentID(v.cfg.TrustDomain, path.String())
	if err != nil {
		return nil, err
	}
	return &attest.Result{AgentID: id, Selectors: Selectors(leaf, chain)}, nil
}

// verify checks leaf against the roots and returns the verified chain
// (leaf first).
//
// An X.509-SVID of the server's own trust domain is refused, and so is
// any certificate that chains only through a CA carrying a SPIFFE ID of
// that trust domain (Writ's CAs and downstream CAs do): such certificates
// are workload or agent identities, which the roots would trust as node
// certificates if they hold the CA that signs Writ's CAs (an
// organisation CA that is also Writ's upstream).
func (v *Verifier) verify(leaf *x509.Certificate, intermediates []*x509.Certificate) ([]*x509.Certificate, error) {
	if leaf.IsCA {
		return nil, fmt.Errorf("%w: the node certificate is a CA certificate", attest.ErrNotTrusted)
	}
	if v.hasOwnSPIFFEID(leaf) {
		return nil, fmt.Errorf("%w: the node certificate is an X.509-SVID of trust domain %q (a workload or agent identity), not a node certificate", attest.ErrNotTrusted, v.cfg.TrustDomain.Name())
	}
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return nil, fmt.Errorf("%w: the node certificate lacks the digitalSignature key usage", attest.ErrNotTrusted)
	}
	roots := x509.NewCertPool()
	n := 0
	for _, r := range v.cfg.Roots() {
		roots.AddCert(r)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("%w: no x509pop CA certificates are configured", attest.ErrNotTrusted)
	}
	inter := x509.NewCertPool()
	for _, c := range intermediates {
		inter.AddCert(c)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   v.cfg.Clock.Now(),
		// A certificate without extended key usages may be used for
		// any; one with them must allow client authentication.
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", attest.ErrNotTrusted, err)
	}
	for _, c := range chains {
		if !slices.ContainsFunc(c, v.hasOwnSPIFFEID) {
			return c, nil
		}
	}
	return nil, fmt.Errorf("%w: the node certificate was issued under a CA of trust domain %q, which issues SVIDs, not node certificates", attest.ErrNotTrusted, v.cfg.TrustDomain.Name())
}

// hasOwnSPIFFEID reports whether c carries a URI SAN that is a SPIFFE ID
// of the verifier's trust domain, in any letter case.
func (v *Verifier) hasOwnSPIFFEID(c *x509.Certificate) bool {
	for _, u := range c.URIs {
		if strings.EqualFold(u.Scheme, "spiffe") && strings.EqualFold(u.Host, v.cfg.TrustDomain.Name()) {
			return true
		}
	}
	return false
}

// Selectors returns the node selectors of leaf, verified by chain (leaf
// first, root last).
func Selectors(leaf *x509.Certificate, chain []*x509.Certificate) []entry.Selector {
	var vals []string
	add := func(kind string, vs ...string) {
		for _, v := range vs {
			if v != "" {
				vals = append(vals, kind+":"+v)
			}
		}
	}
	add("subject:cn", leaf.Subject.CommonName)
	add("subject:o", leaf.Subject.Organization...)
	add("subject:ou", leaf.Subject.OrganizationalUnit...)
	add("serialnumber", leaf.SerialNumber.Text(16))
	for _, c := range chain[1:] {
		add("ca:fingerprint", fingerprint(c.Raw))
	}
	add("san:dns", leaf.DNSNames...)
	add("san:email", leaf.EmailAddresses...)
	for _, ip := range leaf.IPAddresses {
		add("san:ip", ip.String())
	}
	for _, u := range leaf.URIs {
		add("san:uri", u.String())
	}
	sel, _ := attest.Selectors(Type, vals)
	return sel
}

func fingerprint(der []byte) string {
	sum := sha1.Sum(der) //nolint:gosec // see import
	return hex.EncodeToString(sum[:])
}

// signedMessage is what the agent signs for nonce.
func signedMessage(nonce []byte) []byte {
	return append([]byte(signedPrefix), nonce...)
}

func verifySignature(pub crypto.PublicKey, nonce, sig []byte) error {
	if len(nonce) != attest.NonceSize {
		return fmt.Errorf("%w: nonce of %d bytes", attest.ErrProofFailed, len(nonce))
	}
	msg := signedMessage(nonce)
	digest := sha256.Sum256(msg)
	ok := false
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		ok = ecdsa.VerifyASN1(k, digest[:], sig)
	case *rsa.PublicKey:
		ok = rsa.VerifyPSS(k, crypto.SHA256, digest[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) == nil
	case ed25519.PublicKey:
		ok = ed25519.Verify(k, msg, sig)
	default:
		return fmt.Errorf("%w: unsupported key type %T", attest.ErrNotTrusted, pub)
	}
	if !ok {
		return fmt.Errorf("%w: the signature over the nonce does not verify with the certificate's key", attest.ErrProofFailed)
	}
	return nil
}

// Agent is the agent half of x509pop: it holds the node's certificate
// chain and key.
type Agent struct {
	chain [][]byte
	key   crypto.Signer
}

// NewAgent returns the agent half for a chain (leaf first, DER) and the
// leaf's private key. It fails if the key does not match the leaf.
func NewAgent(chain [][]byte, key crypto.Signer) (*Agent, error) {
	if len(chain) == 0 || len(chain) > maxChain {
		return nil, fmt.Errorf("x509pop: %d certificates (want 1 to %d)", len(chain), maxChain)
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, fmt.Errorf("x509pop: certificate: %w", err)
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if e, ok := key.Public().(equaler); !ok || !e.Equal(leaf.PublicKey) {
		return nil, errors.New("x509pop: the private key does not match the certificate")
	}
	return &Agent{chain: chain, key: key}, nil
}

// Type returns "x509pop".
func (a *Agent) Type() string { return Type }

// Payload returns the certificate chain to send first.
func (a *Agent) Payload(context.Context) ([]byte, error) {
	return json.Marshal(payload{Chain: a.chain})
}

// Respond signs the server's nonce with the node's key.
func (a *Agent) Respond(_ context.Context, nonce []byte) ([]byte, error) {
	if len(nonce) != attest.NonceSize {
		return nil, fmt.Errorf("x509pop: challenge of %d bytes, want %d", len(nonce), attest.NonceSize)
	}
	msg := signedMessage(nonce)
	digest := sha256.Sum256(msg)
	switch a.key.Public().(type) {
	case *ecdsa.PublicKey:
		return a.key.Sign(rand.Reader, digest[:], crypto.SHA256)
	case *rsa.PublicKey:
		return a.key.Sign(rand.Reader, digest[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256})
	case ed25519.PublicKey:
		return a.key.Sign(rand.Reader, msg, crypto.Hash(0))
	}
	return nil, fmt.Errorf("x509pop: unsupported key type %T", a.key.Public())
}
