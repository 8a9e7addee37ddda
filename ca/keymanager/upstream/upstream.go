package upstream

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/datadir"
)

// Errors callers branch on; every refusal wraps one of them.
var (
	// ErrFile: an upstream file is missing, unreadable or malformed.
	ErrFile = errors.New("upstream: bad upstream file")
	// ErrNotCA: a certificate of the upstream chain is not a signing CA
	// (no CA:TRUE basic constraint, or no keyCertSign key usage).
	ErrNotCA = errors.New("upstream: certificate is not a signing CA")
	// ErrUntrusted: the upstream chain does not lead to an upstream root.
	ErrUntrusted = errors.New("upstream: chain does not lead to an upstream root")
	// ErrPathLen: a path length constraint leaves no room for Writ's CA.
	ErrPathLen = errors.New("upstream: path length constraint leaves no room for the Writ CA")
	// ErrTrustDomain: a certificate names a SPIFFE ID of another trust domain.
	ErrTrustDomain = errors.New("upstream: certificate is for another trust domain")
	// ErrValidity: a certificate has expired or is not yet valid.
	ErrValidity = errors.New("upstream: certificate not valid now")
	// ErrKeyMismatch: the upstream key is not the upstream certificate's.
	ErrKeyMismatch = errors.New("upstream: key does not match the upstream certificate")
)

// Files names the files of a disk upstream.
type Files struct {
	// Cert holds the upstream CA certificate, then (optionally) the
	// intermediates above it, in order, as PEM.
	Cert string
	// Key is the upstream CA's private key as PEM (PKCS#8, SEC 1 or
	// PKCS#1). It must have no group or other permissions.
	Key string
	// Bundle holds the upstream root certificate(s) as PEM. If empty, the
	// last certificate of Cert must be self-signed and is the root.
	Bundle string
}

// Disk is an upstream CA held in files: a keymanager.Authority.
type Disk struct {
	up keymanager.Upstream
}

// LoadDisk reads the files of a disk upstream. Call Check before use.
func LoadDisk(f Files) (*Disk, error) {
	certs, err := readCerts(f.Cert)
	if err != nil {
		return nil, err
	}
	signer, err := readKey(f.Key)
	if err != nil {
		return nil, err
	}
	var roots []*x509.Certificate
	if f.Bundle != "" {
		if roots, err = readCerts(f.Bundle); err != nil {
			return nil, err
		}
	}
	return New(certs, signer, roots)
}

// New returns the upstream whose CA certificate is certs[0], followed by
// the intermediates above it, with signer its key. roots are the upstream
// trust anchors; if there are none, the last of certs must be
// self-signed and is the root. Call Check before use.
func New(certs []*x509.Certificate, signer crypto.Signer, roots []*x509.Certificate) (*Disk, error) {
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: no upstream certificate", ErrFile)
	}
	if signer == nil {
		return nil, fmt.Errorf("%w: no upstream key", ErrFile)
	}
	if len(roots) == 0 {
		last := certs[len(certs)-1]
		if !selfSigned(last) {
			return nil, fmt.Errorf("%w: no upstream bundle given and the last upstream certificate (%s) is not self-signed; pass the upstream root(s) as the bundle", ErrUntrusted, name(last))
		}
		roots = []*x509.Certificate{last}
	}
	// The chain sent after each Writ CA certificate: the upstream CA and
	// intermediates up to, not including, a root.
	chain := certs
	if i := slices.IndexFunc(certs, func(c *x509.Certificate) bool { return slices.ContainsFunc(roots, c.Equal) }); i >= 0 {
		chain = certs[:i]
	}
	return &Disk{up: keymanager.Upstream{
		Issuer: &x509ca.Issuer{Cert: certs[0], Signer: signer, Chain: slices.Clone(chain)},
		Roots:  slices.Clone(roots),
	}}, nil
}

// Roots returns the upstream trust anchors published in the bundle.
func (d *Disk) Roots() []*x509.Certificate { return slices.Clone(d.up.Roots) }

// NotAfter returns the end of the upstream chain's validity: no Writ CA
// certificate is valid beyond it.
func (d *Disk) NotAfter() time.Time {
	path, root := d.path()
	end := time.Time{}
	for _, c := range append(path, root...) {
		if end.IsZero() || c.NotAfter.Before(end) {
			end = c.NotAfter
		}
	}
	return end
}

// path returns the certificates from the upstream CA up to, not
// including, the root, and the root that signs the last of them (nil if
// none does). When the upstream CA is itself a root, path is empty.
func (d *Disk) path() (path, root []*x509.Certificate) {
	iss := d.up.Issuer
	path = iss.Chain
	if len(path) == 0 {
		return nil, []*x509.Certificate{iss.Cert}
	}
	top := path[len(path)-1]
	for _, r := range d.up.Roots {
		if bytes.Equal(top.RawIssuer, r.RawSubject) && top.CheckSignatureFrom(r) == nil {
			return path, []*x509.Certificate{r}
		}
	}
	return path, nil
}

// Check verifies, at now, that the upstream can sign a CA for trust
// domain td whose SVIDs verify against the upstream roots.
func (d *Disk) Check(now time.Time, td spiffeid.TrustDomain) error {
	iss := d.up.Issuer
	if err := checkKey(iss.Cert, iss.Signer); err != nil {
		return err
	}
	path, root := d.path()
	all := append(slices.Clone(path), root...)
	if len(path) == 0 {
		all = []*x509.Certificate{iss.Cert}
	}
	for i, c := range all {
		role := "upstream intermediate"
		switch {
		case i == 0:
			role = "upstream CA certificate"
		case i == len(path):
			role = "upstream root"
		}
		switch {
		case now.Before(c.NotBefore):
			return fmt.Errorf("%w: %s %s is not valid before %s", ErrValidity, role, name(c), c.NotBefore.UTC().Format(time.RFC3339))
		case !now.Before(c.NotAfter):
			return fmt.Errorf("%w: %s %s expired at %s", ErrValidity, role, name(c), c.NotAfter.UTC().Format(time.RFC3339))
		case !c.BasicConstraintsValid || !c.IsCA:
			return fmt.Errorf("%w: %s %s has no CA:TRUE basic constraint", ErrNotCA, role, name(c))
		// The upstream CA signs Writ's CA: it needs keyCertSign. Above it,
		// a certificate without a key usage extension is unrestricted.
		case (i == 0 || c.KeyUsage != 0) && c.KeyUsage&x509.KeyUsageCertSign == 0:
			return fmt.Errorf("%w: %s %s lacks the keyCertSign key usage", ErrNotCA, role, name(c))
		// Below the certificate at i: i upstream CAs, Writ's CA, then leaves.
		case c.MaxPathLen >= 0 && c.MaxPathLen < i+1:
			return fmt.Errorf("%w: %s %s has path length %d; it needs at least %d (Writ's CA signs below it)", ErrPathLen, role, name(c), c.MaxPathLen, i+1)
		}
		for _, u := range c.URIs {
			if u.Scheme == "spiffe" && u.Host != td.Name() {
				return fmt.Errorf("%w: %s %s names %s, not trust domain %s", ErrTrustDomain, role, name(c), u, td.Name())
			}
		}
	}
	for i := 0; i+1 < len(path); i++ {
		if err := path[i].CheckSignatureFrom(path[i+1]); err != nil || !bytes.Equal(path[i].RawIssuer, path[i+1].RawSubject) {
			return fmt.Errorf("%w: upstream certificate %s is not signed by the next certificate, %s (list the upstream CA first, then each issuer in order)", ErrUntrusted, name(path[i]), name(path[i+1]))
		}
	}
	if len(root) == 0 {
		return fmt.Errorf("%w: %s is not signed by any of the %d upstream root(s)", ErrUntrusted, name(path[len(path)-1]), len(d.up.Roots))
	}
	// Finally the standard verifier, as relying parties will run it.
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range d.up.Roots {
		roots.AddCert(r)
	}
	for _, c := range path {
		inter.AddCert(c)
	}
	if _, err := iss.Cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("%w: %w", ErrUntrusted, err)
	}
	return nil
}

// MintCA signs a CA certificate for req.Signer's key with the upstream
// CA, valid no longer than any certificate of the upstream chain. It
// checks the upstream first.
func (d *Disk) MintCA(ctx context.Context, req keymanager.CARequest) (*keymanager.CA, error) {
	if err := d.Check(req.Now, req.TrustDomain); err != nil {
		return nil, err
	}
	if left := d.NotAfter().Sub(req.Now); left < req.TTL {
		req.TTL = left
	}
	return d.up.MintCA(ctx, req)
}

func checkKey(cert *x509.Certificate, signer crypto.Signer) error {
	pub, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil || !bytes.Equal(pub, cert.RawSubjectPublicKeyInfo) {
		return fmt.Errorf("%w: %s", ErrKeyMismatch, name(cert))
	}
	return nil
}

func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

// name describes a certificate in an error: its subject, or its serial
// number when the subject is empty.
func name(c *x509.Certificate) string {
	if s := c.Subject.String(); s != "" {
		return fmt.Sprintf("%q", s)
	}
	return "serial " + c.SerialNumber.String()
}

func readCerts(path string) ([]*x509.Certificate, error) {
	data, err := readFile(path, false)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: %s: unexpected PEM block %q", ErrFile, path, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrFile, path, err)
		}
		certs = append(certs, c)
	}
	if len(strings.TrimSpace(string(data))) != 0 {
		return nil, fmt.Errorf("%w: %s: data that is not PEM", ErrFile, path)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: %s holds no certificate", ErrFile, path)
	}
	return certs, nil
}

func readKey(path string) (crypto.Signer, error) {
	data, err := readFile(path, true)
	if err != nil {
		return nil, err
	}
	block, rest := pem.Decode(data)
	if block == nil || len(strings.TrimSpace(string(rest))) != 0 {
		return nil, fmt.Errorf("%w: %s: not a single PEM block", ErrFile, path)
	}
	var key any
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("%w: %s: unexpected PEM block %q", ErrFile, path, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrFile, path, err)
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: %s: key of type %T cannot sign", ErrFile, path, key)
	}
	return s, nil
}

// readFile reads an upstream file; private ones must have no group or
// other permissions.
func readFile(path string, private bool) ([]byte, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: no file name", ErrFile)
	}
	var data []byte
	var err error
	if private {
		data, err = datadir.ReadFile(path)
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrFile, err)
	}
	return data, nil
}

// ReadCertificates reads a PEM file of certificates (a root or a bundle).
func ReadCertificates(path string) ([]*x509.Certificate, error) { return readCerts(path) }

// ReadSecret reads a secret file (a password, an auth key), which must
// have no group or other permissions, without its trailing line break.
func ReadSecret(path string) ([]byte, error) {
	data, err := readFile(path, true)
	if err != nil {
		return nil, err
	}
	data = bytes.TrimRight(data, "\r\n")
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: %s is empty", ErrFile, path)
	}
	return data, nil
}
