package agent

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/agent/nodeclient"
	"writ.dev/writ/agent/rotate"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/datadir"
)

// Files in the data directory.
const (
	// StateFile holds the agent's key, its X.509-SVID chain and the trust
	// domain's bundle in one file, replaced as a whole (see stateStore).
	StateFile = "agent_state.json"
	// AdminSocketName is the health service's socket in the data dir.
	AdminSocketName = "agent-admin.sock"
	// WorkloadSocketName is the default Workload API socket in the data dir.
	WorkloadSocketName = "workload.sock"
)

// maxFileSize bounds what the agent reads from its data dir and from
// --trust-bundle.
const maxFileSize = 4 << 20

// keyType is the type of every key the agent generates.
const keyType = x509ca.KeyTypeECP256

// agentSVID is the agent's own X.509-SVID.
type agentSVID struct {
	id        spiffeid.ID
	chain     [][]byte
	key       crypto.Signer
	notBefore time.Time
	// start is when the lifetime is measured from for rotation (see
	// received).
	start time.Time
	// receivedAt is the clock reading when it arrived from the server;
	// zero if loaded from disk.
	receivedAt time.Time
	notAfter   time.Time
	jitter     time.Duration // rotation jitter, chosen once
	cert       *tls.Certificate
	// authorityID names the CA that signed it, as svidcache.X509SVID's
	// AuthorityID does.
	authorityID string
}

func (s *agentSVID) rotateAt() time.Time { return rotate.RotateAt(s.start, s.notAfter, s.jitter) }

// steppedBack reports whether the wall clock, at now, has stepped back
// more than maxStepBack since the SVID arrived: its rotation time is then
// as much further away, and it may not be valid at the new time.
func (s *agentSVID) steppedBack(now time.Time) bool {
	return !s.receivedAt.IsZero() && now.Before(s.receivedAt.Add(-maxStepBack))
}

// received records when the SVID arrived from the server, so its lifetime
// is measured from then rather than from the backdated NotBefore (see
// rotate.Start). An SVID loaded from disk keeps NotBefore.
func (s *agentSVID) received(at time.Time) {
	s.receivedAt = at
	s.start = rotate.Start(s.notBefore, at)
	s.jitter = rotate.NewJitter(s.start, s.notAfter)
}

func (s *agentSVID) expired(now time.Time) bool { return !now.Before(s.notAfter) }

// newAgentSVID checks an agent SVID chain: it is an X.509-SVID that
// verifies to the bundle's X.509 authorities at now, names an agent of td
// (not the server), and certifies key.
func newAgentSVID(td spiffeid.TrustDomain, chain [][]byte, key crypto.Signer, bundle *spiffebundle.Bundle, now time.Time) (*agentSVID, error) {
	certs := make([]*x509.Certificate, len(chain))
	for i, der := range chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("agent SVID certificate %d: %w", i, err)
		}
		certs[i] = c
	}
	id, err := x509ca.VerifyX509SVID(certs, bundle.X509Authorities(), now)
	if err != nil {
		return nil, fmt.Errorf("agent SVID: %w", err)
	}
	if id.TrustDomain() != td || id.Path() == "" || id == nodeclient.ServerID(td) {
		return nil, fmt.Errorf("agent SVID names %s, not an agent of trust domain %s", id, td.Name())
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil || !bytes.Equal(pub, certs[0].RawSubjectPublicKeyInfo) {
		return nil, errKeyMismatch
	}
	leaf := certs[0]
	return &agentSVID{
		id:        id,
		chain:     chain,
		key:       key,
		notBefore: leaf.NotBefore,
		start:     leaf.NotBefore,
		notAfter:  leaf.NotAfter,
		jitter:    rotate.NewJitter(leaf.NotBefore, leaf.NotAfter),
		cert:      &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf},

		authorityID: authorityID(certs),
	}, nil
}

// authorityID returns the ID of the CA that signed chain[0]: its
// AuthorityKeyId, else the SubjectKeyId of chain[1], in lowercase hex.
func authorityID(chain []*x509.Certificate) string {
	if aki := chain[0].AuthorityKeyId; len(aki) > 0 {
		return hex.EncodeToString(aki)
	}
	if len(chain) > 1 {
		return hex.EncodeToString(chain[1].SubjectKeyId)
	}
	return ""
}

var errKeyMismatch = errors.New("agent key does not match the agent SVID")

// newKeyAndCSR generates a key and a CSR for it. The server uses only the
// CSR's public key.
func newKeyAndCSR() (crypto.Signer, []byte, error) {
	key, err := x509ca.GenerateKey(keyType)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CSR: %w", err)
	}
	return key, csr, nil
}

func readOptional(path string) ([]byte, error) {
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	b, err := datadir.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) > maxFileSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxFileSize)
	}
	return b, nil
}

// decodeCerts reads PEM CERTIFICATE blocks (nothing else) into DER.
func decodeCerts(data []byte) ([][]byte, error) {
	var out [][]byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q", b.Type)
		}
		out = append(out, b.Bytes)
	}
	if len(bytes.TrimSpace(data)) != 0 {
		return nil, errors.New("trailing data after the PEM certificates")
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificates")
	}
	return out, nil
}

func decodeKey(data []byte) (crypto.Signer, error) {
	b, rest := pem.Decode(data)
	if b == nil || b.Type != "PRIVATE KEY" || len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("want exactly one PEM PRIVATE KEY block (PKCS#8)")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key of type %T cannot sign", k)
	}
	return s, nil
}

func encodeCerts(chain [][]byte) []byte {
	var buf bytes.Buffer
	for _, der := range chain {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	return buf.Bytes()
}

// readTrustBundle reads --trust-bundle: PEM CA certificates.
func readTrustBundle(path string) ([]*x509.Certificate, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("trust bundle: %w", err)
	}
	defer f.Close()
	data := make([]byte, maxFileSize+1)
	n, _ := io.ReadFull(f, data)
	if n > maxFileSize {
		return nil, fmt.Errorf("trust bundle %s is larger than %d bytes", path, maxFileSize)
	}
	ders, err := decodeCerts(data[:n])
	if err != nil {
		return nil, fmt.Errorf("trust bundle %s: %w", path, err)
	}
	certs := make([]*x509.Certificate, len(ders))
	for i, der := range ders {
		if certs[i], err = x509.ParseCertificate(der); err != nil {
			return nil, fmt.Errorf("trust bundle %s: certificate %d: %w", path, i+1, err)
		}
		if !certs[i].IsCA {
			return nil, fmt.Errorf("trust bundle %s: certificate %d is not a CA", path, i+1)
		}
	}
	return certs, nil
}
