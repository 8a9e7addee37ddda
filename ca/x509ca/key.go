package x509ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"slices"
)

// Key types the server can generate for its own CA keys. Names are exact:
// ParseKeyType accepts no other spelling.
const (
	KeyTypeECP256  = "ec-p256"
	KeyTypeECP384  = "ec-p384"
	KeyTypeRSA2048 = "rsa-2048"
)

var keyTypes = []string{KeyTypeECP256, KeyTypeECP384, KeyTypeRSA2048}

// KeyTypes returns the key types GenerateKey accepts, default first.
func KeyTypes() []string { return slices.Clone(keyTypes) }

// ParseKeyType returns s if it is one of KeyTypes, and an error wrapping
// ErrKeyType otherwise. It does not fold case or trim.
func ParseKeyType(s string) (string, error) {
	if !slices.Contains(keyTypes, s) {
		return "", fmt.Errorf("%w: %q (want one of %q)", ErrKeyType, s, keyTypes)
	}
	return s, nil
}

// GenerateKey generates a new private key of the given type (see KeyTypes).
func GenerateKey(keyType string) (crypto.Signer, error) {
	switch keyType {
	case KeyTypeECP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case KeyTypeECP384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case KeyTypeRSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	}
	_, err := ParseKeyType(keyType)
	return nil, err
}

// CheckPublicKey reports whether pub is allowed by the key policy that
// applies to every key Writ certifies or signs with: ECDSA on P-256 or
// P-384 (a valid point), or RSA with a 2048, 3072 or 4096-bit modulus and
// public exponent 65537. The error wraps ErrKeyPolicy.
func CheckPublicKey(pub crypto.PublicKey) error {
	_, err := publicKeyBits(pub)
	return err
}

// publicKeyBits applies the key policy and returns the content of the
// subjectPublicKey BIT STRING that x509 would encode for pub.
func publicKeyBits(pub crypto.PublicKey) ([]byte, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k == nil || k.X == nil || k.Y == nil {
			return nil, fmt.Errorf("%w: empty ECDSA key", ErrKeyPolicy)
		}
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("%w: ECDSA curve %s (want P-256 or P-384)", ErrKeyPolicy, curveName(k.Curve))
		}
		// ECDH validates the point (on the curve, not the identity).
		ek, err := k.ECDH()
		if err != nil {
			return nil, fmt.Errorf("%w: invalid ECDSA public key: %v", ErrKeyPolicy, err)
		}
		return ek.Bytes(), nil
	case *rsa.PublicKey:
		if k == nil || k.N == nil {
			return nil, fmt.Errorf("%w: empty RSA key", ErrKeyPolicy)
		}
		switch n := k.N.BitLen(); n {
		case 2048, 3072, 4096:
		default:
			return nil, fmt.Errorf("%w: RSA modulus of %d bits (want 2048, 3072 or 4096)", ErrKeyPolicy, n)
		}
		if k.E != 65537 {
			return nil, fmt.Errorf("%w: RSA public exponent %d (want 65537)", ErrKeyPolicy, k.E)
		}
		return x509.MarshalPKCS1PublicKey(k), nil
	case nil:
		return nil, fmt.Errorf("%w: no public key", ErrKeyPolicy)
	default:
		return nil, fmt.Errorf("%w: key type %T", ErrKeyPolicy, pub)
	}
}

func curveName(c elliptic.Curve) string {
	if c == nil || c.Params() == nil {
		return "unknown"
	}
	return c.Params().Name
}

// subjectKeyID derives a key identifier from the subjectPublicKey bits:
// the leftmost 160 bits of their SHA-256 hash (RFC 7093, section 2, method 1).
func subjectKeyID(bits []byte) []byte {
	sum := sha256.Sum256(bits)
	return sum[:20]
}
