package sshpop

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/crypto/ssh"

	"writ.dev/writ/ca/attest"
	"writ.dev/writ/ca/clock"
)

// Type is the attestation type's name on the wire, in agent records and
// as the selector type.
const Type = "sshpop"

// signedPrefix starts every message the agent signs.
const signedPrefix = "writ sshpop v1 challenge\x00"

type payload struct {
	// Cert is the host certificate in authorized_keys form.
	Cert []byte `json:"cert"`
}

// Config configures a Verifier.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	// Authorities returns the host CA public keys that may sign node
	// certificates; it is called at every attestation. Required.
	Authorities func() []ssh.PublicKey
	// Clock is the time certificates are checked at. Required.
	Clock clock.Clock
}

// Verifier is the server half of sshpop.
type Verifier struct {
	cfg Config
}

// NewVerifier checks cfg and returns a Verifier.
func NewVerifier(cfg Config) (*Verifier, error) {
	if cfg.TrustDomain.IsZero() || cfg.Authorities == nil || cfg.Clock == nil {
		return nil, errors.New("sshpop: trust domain, authorities and clock are required")
	}
	return &Verifier{cfg: cfg}, nil
}

// Type returns "sshpop".
func (v *Verifier) Type() string { return Type }

// Attest verifies the agent's host certificate, challenges it to sign a
// fresh nonce with the host key and returns its agent ID and selectors.
func (v *Verifier) Attest(ctx context.Context, raw []byte, challenge attest.Challenger) (*attest.Result, error) {
	var p payload
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("%w: %w", attest.ErrInvalidPayload, err)
	}
	cert, err := ParseCertificate(p.Cert)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", attest.ErrInvalidPayload, err)
	}
	ca, err := v.check(cert)
	if err != nil {
		return nil, err
	}
	nonce := attest.NewNonce()
	resp, err := challenge(ctx, nonce)
	if err != nil {
		return nil, err
	}
	var sig ssh.Signature
	if err := ssh.Unmarshal(resp, &sig); err != nil {
		return nil, fmt.Errorf("%w: signature: %w", attest.ErrInvalidPayload, err)
	}
	if err := cert.Key.Verify(signedMessage(nonce), &sig); err != nil {
		return nil, fmt.Errorf("%w: the signature over the nonce does not verify with the host key: %w", attest.ErrProofFailed, err)
	}
	id, err := attest.AgentID(v.cfg.TrustDomain, Type+"/"+Fingerprint(cert.Key))
	if err != nil {
		return nil, err
	}
	var vals []string
	for _, p := range cert.ValidPrincipals {
		vals = append(vals, "principal:"+p)
	}
	vals = append(vals, "ca:fingerprint:"+Fingerprint(ca))
	sel, _ := attest.Selectors(Type, vals)
	return &attest.Result{AgentID: id, Selectors: sel}, nil
}

// check verifies cert and returns the CA key that signed it.
func (v *Verifier) check(cert *ssh.Certificate) (ssh.PublicKey, error) {
	if cert.CertType != ssh.HostCert {
		return nil, fmt.Errorf("%w: the certificate is a user certificate, not a host certificate", attest.ErrNotTrusted)
	}
	if len(cert.ValidPrincipals) == 0 {
		return nil, fmt.Errorf("%w: the host certificate names no principal", attest.ErrNotTrusted)
	}
	var ca ssh.PublicKey
	signer := cert.SignatureKey.Marshal()
	for _, k := range v.cfg.Authorities() {
		if bytes.Equal(k.Marshal(), signer) {
			ca = k
			break
		}
	}
	if ca == nil {
		return nil, fmt.Errorf("%w: the host certificate is not signed by a trusted host CA", attest.ErrNotTrusted)
	}
	checker := ssh.CertChecker{Clock: v.cfg.Clock.Now}
	// CheckCert checks validity, critical options and the CA's signature;
	// the principal is one the certificate names (any is the node's).
	if err := checker.CheckCert(cert.ValidPrincipals[0], cert); err != nil {
		return nil, fmt.Errorf("%w: %w", attest.ErrNotTrusted, err)
	}
	return ca, nil
}

// Fingerprint returns the lowercase hex SHA-256 of key's wire form.
func Fingerprint(key ssh.PublicKey) string {
	sum := sha256.Sum256(key.Marshal())
	return hex.EncodeToString(sum[:])
}

// ParseCertificate parses an SSH certificate in authorized_keys form
// (the content of an ssh-keygen -s output file).
func ParseCertificate(b []byte) (*ssh.Certificate, error) {
	k, _, _, rest, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		return nil, fmt.Errorf("sshpop: certificate: %w", err)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("sshpop: certificate: more than one key in the file")
	}
	cert, ok := k.(*ssh.Certificate)
	if !ok {
		return nil, errors.New("sshpop: certificate: the file holds a public key, not a certificate")
	}
	return cert, nil
}

func signedMessage(nonce []byte) []byte {
	return append([]byte(signedPrefix), nonce...)
}

// Agent is the agent half of sshpop.
type Agent struct {
	cert   []byte
	signer ssh.Signer
}

// NewAgent returns the agent half for a host certificate (authorized_keys
// form) and the host's private key. It fails if they do not match.
func NewAgent(certFile []byte, key ssh.Signer) (*Agent, error) {
	cert, err := ParseCertificate(certFile)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(cert.Key.Marshal(), key.PublicKey().Marshal()) {
		return nil, errors.New("sshpop: the host key does not match the certificate")
	}
	return &Agent{cert: ssh.MarshalAuthorizedKey(cert), signer: key}, nil
}

// Type returns "sshpop".
func (a *Agent) Type() string { return Type }

// Payload returns the host certificate to send first.
func (a *Agent) Payload(context.Context) ([]byte, error) {
	return json.Marshal(payload{Cert: a.cert})
}

// Respond signs the server's nonce with the host key (rsa-sha2-256 for
// RSA keys).
func (a *Agent) Respond(_ context.Context, nonce []byte) ([]byte, error) {
	if len(nonce) != attest.NonceSize {
		return nil, fmt.Errorf("sshpop: challenge of %d bytes, want %d", len(nonce), attest.NonceSize)
	}
	var (
		sig *ssh.Signature
		err error
	)
	if as, ok := a.signer.(ssh.AlgorithmSigner); ok && a.signer.PublicKey().Type() == ssh.KeyAlgoRSA {
		sig, err = as.SignWithAlgorithm(rand.Reader, signedMessage(nonce), ssh.KeyAlgoRSASHA256)
	} else {
		sig, err = a.signer.Sign(rand.Reader, signedMessage(nonce))
	}
	if err != nil {
		return nil, fmt.Errorf("sshpop: sign: %w", err)
	}
	return ssh.Marshal(sig), nil
}
