package keymanager

import (
	"context"
	"crypto"
	"crypto/x509"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/x509ca"
)

// Authority makes the certificate of each new X.509 CA key. It is the seam
// for upstream CAs: SelfSigned today; a disk, step-ca or cfssl upstream
// signs the CA under its own root instead.
type Authority interface {
	// MintCA returns the CA certificate for the key req.Signer, with its
	// chain and the trust anchors relying parties must hold.
	MintCA(ctx context.Context, req CARequest) (*CA, error)
}

// JWTPublisher is an optional capability of an Authority whose trust
// domain bundle is kept upstream (a parent Writ deployment): each new JWT
// key is published there before it is recorded, so that JWT-SVIDs it
// signs validate against the upstream bundle. PublishJWTKey returns the
// expiry granted upstream, no later than notAfter; the key's lifetime is
// cut to it.
type JWTPublisher interface {
	PublishJWTKey(ctx context.Context, id string, pub crypto.PublicKey, notAfter time.Time) (time.Time, error)
}

// CARequest asks an Authority for a CA certificate.
type CARequest struct {
	TrustDomain spiffeid.TrustDomain
	// Signer is the new CA key; an upstream signs its public key (a CSR
	// made with it proves possession).
	Signer crypto.Signer
	// Now is the time of the request and TTL the lifetime wanted; an
	// upstream may issue a shorter one.
	Now time.Time
	TTL time.Duration
}

// CA is a CA certificate an Authority issued.
type CA struct {
	// Cert is the CA certificate for the requested key. It must be a
	// signing CA for the trust domain and must not be valid beyond
	// TrustAnchors.
	Cert *x509.Certificate
	// Chain is the intermediates from Cert's issuer up to, not including,
	// the trust anchor, in order. Empty for a self-signed CA and for a CA
	// signed directly by the anchor.
	Chain []*x509.Certificate
	// TrustAnchors are published in the trust bundle: Cert itself for a
	// self-signed CA, the upstream root(s) otherwise.
	TrustAnchors []*x509.Certificate
}

// SelfSigned is the Authority of a standalone server: each CA key gets a
// self-signed certificate that is its own trust anchor.
type SelfSigned struct{}

// MintCA returns a self-signed CA certificate for req.Signer.
func (SelfSigned) MintCA(_ context.Context, req CARequest) (*CA, error) {
	cert, err := x509ca.NewSelfSignedCA(req.Now, req.TrustDomain, req.Signer, req.TTL)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, TrustAnchors: []*x509.Certificate{cert}}, nil
}

// Upstream is the Authority of a server whose CA keys are signed by an
// upstream CA whose key this process holds (the core of a disk upstream
// authority): each CA certificate is issued by Issuer and capped at its
// validity, and Roots are published as the trust anchors.
type Upstream struct {
	// Issuer is the upstream CA. Its Chain is the intermediates from
	// Issuer.Cert up to, not including, the root: empty when Issuer.Cert
	// is itself the root.
	Issuer *x509ca.Issuer
	// Roots are the trust anchors Issuer chains to.
	Roots []*x509.Certificate
}

// MintCA signs a CA certificate for req.Signer's public key with the
// upstream CA.
func (u *Upstream) MintCA(_ context.Context, req CARequest) (*CA, error) {
	cert, err := x509ca.SignCA(req.Now, req.TrustDomain, req.Signer.Public(), u.Issuer, req.TTL)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Chain: slices.Clone(u.Issuer.Chain), TrustAnchors: slices.Clone(u.Roots)}, nil
}
