package x509ca

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net/url"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/entry"
)

// SVIDParams describes an X.509-SVID. Every field comes from the
// registration entry (or the agent record) and the server's configuration,
// never from the CSR: the CSR contributes only PublicKey, via CheckCSR.
type SVIDParams struct {
	// ID is the SPIFFE ID, the only URI SAN. It must have a path and, if
	// the issuer carries a SPIFFE URI SAN, belong to the issuer's trust
	// domain.
	ID spiffeid.ID
	// DNSNames are the DNS SANs, in order; the first is also the subject
	// CN. Each must pass entry.ParseDNSName; no duplicates.
	DNSNames []string
	// TTL is the requested lifetime; the issuer's NotAfter caps it.
	TTL time.Duration
	// PublicKey must pass CheckPublicKey.
	PublicKey crypto.PublicKey
	// Agent marks the SVID as an agent's: it carries the certificate
	// policy OIDAgentSVID (see IsAgentSVID). Only the signing of agent
	// SVIDs sets it.
	Agent bool
}

// OIDAgentSVID is the certificate policy Writ puts in agent X.509-SVIDs
// and in no other certificate, so that a server tells an agent SVID from
// a workload SVID for the same SPIFFE ID. It is a UUID-based OID (ITU-T
// X.667, arc 2.25), which needs no registration.
var OIDAgentSVID = mustParseOID("2.25.67647753613530308722418468990168732592")

func mustParseOID(s string) x509.OID {
	oid, err := x509.ParseOID(s)
	if err != nil {
		panic(err)
	}
	return oid
}

// IsAgentSVID reports whether leaf carries the agent SVID policy. Only
// certificates its issuer's key signed as agent SVIDs do; the caller
// must check who the issuer is.
func IsAgentSVID(leaf *x509.Certificate) bool {
	for _, p := range leaf.Policies {
		if p.Equal(OIDAgentSVID) {
			return true
		}
	}
	return false
}

var svidExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}

// SignX509SVID signs a leaf X.509-SVID with iss and returns its DER. The
// leaf follows the SPIFFE X.509-SVID profile: one URI SAN (p.ID), DNS SANs
// only from p.DNSNames, basic constraints CA=false, KeyUsage (critical)
// digitalSignature|keyEncipherment|keyAgreement, ExtKeyUsage serverAuth and
// clientAuth, a random 128-bit serial, SubjectKeyId from the public key,
// AuthorityKeyId = the issuer's SubjectKeyId, and Subject O=Writ with
// CN = p.DNSNames[0] if there is one. An agent SVID (p.Agent) also
// carries the certificate policy OIDAgentSVID.
//
// Validity is [max(now-Backdate, issuer NotBefore), min(now+TTL, issuer
// NotAfter)], in whole seconds: a leaf never outlives its issuer. It
// returns ErrIssuerExpired if now is not before the issuer's NotAfter and
// ErrIssuerNotYetValid if now is before its NotBefore.
func SignX509SVID(now time.Time, iss *Issuer, p SVIDParams) ([]byte, error) {
	if iss == nil || iss.Cert == nil || iss.Signer == nil {
		return nil, fmt.Errorf("%w: missing certificate or signer", ErrIssuer)
	}
	ic := iss.Cert
	if !ic.BasicConstraintsValid || !ic.IsCA || ic.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("%w: certificate is not a signing CA", ErrIssuer)
	}
	if !now.Before(ic.NotAfter) {
		return nil, fmt.Errorf("%w: at %s (NotAfter %s)", ErrIssuerExpired, now.UTC().Format(time.RFC3339), ic.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(ic.NotBefore) {
		return nil, fmt.Errorf("%w: at %s (NotBefore %s)", ErrIssuerNotYetValid, now.UTC().Format(time.RFC3339), ic.NotBefore.UTC().Format(time.RFC3339))
	}

	if p.ID.IsZero() {
		return nil, fmt.Errorf("%w: no SPIFFE ID", ErrParams)
	}
	if p.ID.Path() == "" {
		return nil, fmt.Errorf("%w: SPIFFE ID %q names a trust domain, not a workload", ErrParams, p.ID)
	}
	if err := checkIssuerDomain(ic, p.ID.TrustDomain()); err != nil {
		return nil, err
	}
	if p.TTL <= 0 {
		return nil, fmt.Errorf("%w: TTL %v is not positive", ErrParams, p.TTL)
	}
	for i, n := range p.DNSNames {
		if _, err := entry.ParseDNSName(n); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrParams, err)
		}
		if slices.Contains(p.DNSNames[:i], n) {
			return nil, fmt.Errorf("%w: DNS name %q is listed twice", ErrParams, n)
		}
	}
	bits, err := publicKeyBits(p.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("%w: SVID key: %w", ErrParams, err)
	}

	notBefore := now.Add(-Backdate).Truncate(time.Second)
	if notBefore.Before(ic.NotBefore) {
		notBefore = ic.NotBefore
	}
	notAfter := now.Add(p.TTL).Truncate(time.Second)
	if notAfter.After(ic.NotAfter) {
		notAfter = ic.NotAfter
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("%w: TTL %v is shorter than a second", ErrParams, p.TTL)
	}

	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	subject := pkix.Name{Organization: []string{Organization}}
	var dns []string
	if len(p.DNSNames) > 0 {
		subject.CommonName = p.DNSNames[0]
		dns = slices.Clone(p.DNSNames)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		IsCA:                  false,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:           svidExtKeyUsage,
		URIs:                  []*url.URL{p.ID.URL()},
		DNSNames:              dns,
		SubjectKeyId:          subjectKeyID(bits),
		AuthorityKeyId:        ic.SubjectKeyId,
	}
	if p.Agent {
		tmpl.Policies = []x509.OID{OIDAgentSVID}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ic, p.PublicKey, iss.Signer)
	if err != nil {
		return nil, fmt.Errorf("x509ca: sign X.509-SVID: %w", err)
	}
	return der, nil
}

// inDomain reports whether CA certificate c may sign for trust domain td:
// it has no SPIFFE URI SAN, or one naming td.
func inDomain(c *x509.Certificate, td spiffeid.TrustDomain) bool {
	return checkIssuerDomain(c, td) == nil
}

// checkIssuerDomain refuses to sign an ID of trust domain td with an
// issuer whose SPIFFE URI SAN names another trust domain. Issuers without
// a SPIFFE URI SAN (an upstream CA's intermediate) are not constrained.
func checkIssuerDomain(ic *x509.Certificate, td spiffeid.TrustDomain) error {
	found := false
	for _, u := range ic.URIs {
		if u.Scheme != "spiffe" {
			continue
		}
		found = true
		if u.Host == td.Name() {
			return nil
		}
	}
	if found {
		return fmt.Errorf("%w: SPIFFE ID in trust domain %q, issuer is not", ErrParams, td.Name())
	}
	return nil
}

// VerifyX509SVID checks that chain (leaf first, then intermediates) is an
// X.509-SVID and that it chains to one of roots at now, and returns the
// leaf's SPIFFE ID. The leaf must have exactly one URI SAN, a valid SPIFFE
// ID; basic constraints with CA=false; KeyUsage with digitalSignature and
// without keyCertSign or cRLSign. Every intermediate must be a CA with
// keyCertSign. Extended key usages are not required (as in go-spiffe).
//
// roots must be the X.509 authorities of the trust domain the caller
// expects the ID in. As a second line of defence, a root or intermediate
// whose SPIFFE URI SAN names another trust domain than the leaf's is never
// used: an ID is never verified with another domain's keys.
func VerifyX509SVID(chain []*x509.Certificate, roots []*x509.Certificate, now time.Time) (spiffeid.ID, error) {
	if now.IsZero() {
		// x509 would read the clock.
		return spiffeid.ID{}, fmt.Errorf("%w: zero time", ErrParams)
	}
	if len(chain) == 0 || chain[0] == nil {
		return spiffeid.ID{}, fmt.Errorf("%w: no leaf certificate", ErrNotSVID)
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 {
		return spiffeid.ID{}, fmt.Errorf("%w: leaf has %d URI SANs (want 1)", ErrNotSVID, len(leaf.URIs))
	}
	id, err := spiffeid.FromURI(leaf.URIs[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: URI SAN: %w", ErrNotSVID, err)
	}
	switch {
	case !leaf.BasicConstraintsValid:
		return spiffeid.ID{}, fmt.Errorf("%w: leaf has no basic constraints", ErrNotSVID)
	case leaf.IsCA:
		return spiffeid.ID{}, fmt.Errorf("%w: leaf is a CA", ErrNotSVID)
	case leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0:
		return spiffeid.ID{}, fmt.Errorf("%w: leaf has keyCertSign or cRLSign", ErrNotSVID)
	case leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0:
		return spiffeid.ID{}, fmt.Errorf("%w: leaf lacks digitalSignature", ErrNotSVID)
	}
	td := id.TrustDomain()
	inter := x509.NewCertPool()
	for i, c := range chain[1:] {
		if c == nil || !c.BasicConstraintsValid || !c.IsCA || c.KeyUsage&x509.KeyUsageCertSign == 0 {
			return spiffeid.ID{}, fmt.Errorf("%w: chain certificate %d is not a signing CA", ErrNotSVID, i+1)
		}
		if !inDomain(c, td) {
			return spiffeid.ID{}, fmt.Errorf("%w: chain certificate %d belongs to another trust domain", ErrNotSVID, i+1)
		}
		inter.AddCert(c)
	}
	pool := x509.NewCertPool()
	n := 0
	for _, r := range roots {
		if r != nil && inDomain(r, td) {
			pool.AddCert(r)
			n++
		}
	}
	if n == 0 {
		return spiffeid.ID{}, fmt.Errorf("%w: no roots for trust domain %q", ErrUntrusted, td.Name())
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: %w", ErrUntrusted, err)
	}
	return id, nil
}
