package svidcache

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// X509SVID is an X.509-SVID held by the cache, with everything the
// Workload API sends precomputed. It is immutable: the cache and its
// readers share one value, and nobody may modify it or the slices and
// keys it points to.
//
// The chain is kept as DER only: a parsed x509.Certificate costs about
// 3.5 KB, more than everything else an entry needs together, so
// Certificates and Leaf parse it on each call (about 10 µs per
// certificate). The Workload API sends ChainDER and PrivateKeyDER as they
// are.
type X509SVID struct {
	// EntryID is the registration entry the SVID was issued for.
	EntryID string
	// ID is the SPIFFE ID: the leaf's only URI SAN.
	ID spiffeid.ID
	// ChainDER is the chain as concatenated DER certificates, leaf first:
	// the Workload API's x509_svid field.
	ChainDER []byte
	// PrivateKeyDER is the leaf's private key in PKCS#8 DER: the
	// Workload API's x509_svid_key field. It never leaves the node
	// except to the workload. Only the DER is kept (a parsed P-256 key
	// costs about 360 bytes more per SVID, on every entry the agent
	// holds); Signer parses it.
	PrivateKeyDER []byte
	// NotBefore and NotAfter are the leaf's validity.
	NotBefore, NotAfter time.Time
	// AuthorityID identifies the CA that signed the leaf: its
	// AuthorityKeyId (the issuing CA's SubjectKeyId) in lowercase hex,
	// as the node API names tainted X.509 authorities. Empty if the leaf
	// has none.
	AuthorityID string

	leafLen  int      // length of the leaf's DER at the start of ChainDER
	dnsNames []string // the leaf's DNS SANs
}

// Certificates parses and returns the chain, leaf first. The
// certificates are the caller's; their Raw fields share ChainDER's memory.
func (s *X509SVID) Certificates() []*x509.Certificate {
	certs, err := x509.ParseCertificates(s.ChainDER)
	if err != nil {
		panic("svidcache: chain parsed before no longer parses: " + err.Error())
	}
	return certs
}

// Leaf parses and returns the leaf certificate.
func (s *X509SVID) Leaf() *x509.Certificate {
	c, err := x509.ParseCertificate(s.LeafDER())
	if err != nil {
		panic("svidcache: leaf parsed before no longer parses: " + err.Error())
	}
	return c
}

// Signer parses and returns the leaf's private key. The key is the
// caller's.
func (s *X509SVID) Signer() (crypto.Signer, error) {
	k, err := x509.ParsePKCS8PrivateKey(s.PrivateKeyDER)
	if err != nil {
		return nil, fmt.Errorf("%w: private key: %w", ErrInvalidSVID, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: private key of type %T cannot sign", ErrInvalidSVID, k)
	}
	return signer, nil
}

// LeafDER returns the leaf certificate's DER (a prefix of ChainDER).
func (s *X509SVID) LeafDER() []byte { return s.ChainDER[:s.leafLen:s.leafLen] }

// DNSNames returns the leaf's DNS SANs. The slice is shared.
func (s *X509SVID) DNSNames() []string { return s.dnsNames }

// Expired reports whether the SVID is no longer usable at now: now is at
// or after NotAfter.
func (s *X509SVID) Expired(now time.Time) bool { return !now.Before(s.NotAfter) }

// ErrInvalidSVID is wrapped by NewX509SVID's errors.
var ErrInvalidSVID = errors.New("svidcache: invalid X.509-SVID")

// NewX509SVID builds the X509SVID of entry entryID from its certificate
// chain (DER, leaf first) and private key. It parses the chain once into
// one buffer, checks that the leaf has exactly one URI SAN holding a
// SPIFFE ID and that key is the leaf's key, and precomputes key's PKCS#8
// encoding. Only the DER is kept (see X509SVID): key itself is not. It
// does not verify the chain against a bundle: callers do, with
// x509ca.VerifyX509SVID, before handing the SVID to the cache.
func NewX509SVID(entryID string, chain [][]byte, key crypto.Signer) (*X509SVID, error) {
	if len(chain) == 0 {
		return nil, fmt.Errorf("%w: empty chain", ErrInvalidSVID)
	}
	if key == nil {
		return nil, fmt.Errorf("%w: no private key", ErrInvalidSVID)
	}
	n := 0
	for _, c := range chain {
		n += len(c)
	}
	der := make([]byte, 0, n)
	for _, c := range chain {
		der = append(der, c...)
	}
	certs, err := x509.ParseCertificates(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidSVID, err)
	}
	if len(certs) != len(chain) {
		return nil, fmt.Errorf("%w: chain of %d certificates parsed as %d", ErrInvalidSVID, len(chain), len(certs))
	}
	leaf := certs[0]
	if len(leaf.URIs) != 1 {
		return nil, fmt.Errorf("%w: leaf has %d URI SANs (want 1)", ErrInvalidSVID, len(leaf.URIs))
	}
	id, err := spiffeid.FromURI(leaf.URIs[0])
	if err != nil {
		return nil, fmt.Errorf("%w: URI SAN: %w", ErrInvalidSVID, err)
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, fmt.Errorf("%w: private key: %w", ErrInvalidSVID, err)
	}
	if !bytes.Equal(pub, leaf.RawSubjectPublicKeyInfo) {
		return nil, fmt.Errorf("%w: private key does not match the leaf certificate", ErrInvalidSVID)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("%w: private key: %w", ErrInvalidSVID, err)
	}
	return &X509SVID{
		EntryID:       entryID,
		ID:            id,
		ChainDER:      der,
		PrivateKeyDER: pkcs8,
		NotBefore:     leaf.NotBefore,
		NotAfter:      leaf.NotAfter,
		AuthorityID:   authorityID(certs),
		leafLen:       len(leaf.Raw),
		dnsNames:      leaf.DNSNames,
	}, nil
}

// authorityID returns the ID of the CA that signed the first certificate
// of chain: the leaf's AuthorityKeyId, else the SubjectKeyId of the next
// certificate, in lowercase hex.
func authorityID(chain []*x509.Certificate) string {
	if aki := chain[0].AuthorityKeyId; len(aki) > 0 {
		return hex.EncodeToString(aki)
	}
	if len(chain) > 1 {
		return hex.EncodeToString(chain[1].SubjectKeyId)
	}
	return ""
}

// JWTSVID is a JWT-SVID held by the cache. It is immutable.
type JWTSVID struct {
	// Token is the compact JWS.
	Token string
	// ID is the token's subject.
	ID spiffeid.ID
	// Audience is the sorted, duplicate-free audience it was requested for.
	Audience []string
	// KeyID is the kid of the key that signed it.
	KeyID string
	// IssuedAt is the token's iat, or when the cache received it if it
	// has none or a later one; ExpiresAt is its exp.
	IssuedAt, ExpiresAt time.Time
}

// Fresh reports whether the cache hands the token out again at now:
// before half its lifetime has passed.
func (j *JWTSVID) Fresh(now time.Time) bool {
	half := j.IssuedAt.Add(j.ExpiresAt.Sub(j.IssuedAt) / 2)
	return now.Before(half) && now.Before(j.ExpiresAt)
}
