package jwtsvid

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Errors callers branch on. Every error Validate returns wraps exactly one
// of these; so does every error Sign returns, except failures of the
// signer itself (such as a KMS error), which are wrapped as they come.
var (
	// ErrInvalid: invalid arguments to Sign or Validate (not the token).
	ErrInvalid = errors.New("jwtsvid: invalid argument")
	// ErrUnsupportedKey: Sign's key is not ECDSA P-256/P-384 or RSA >= 2048 bits.
	ErrUnsupportedKey = errors.New("jwtsvid: unsupported signing key")
	// ErrKeyExpired: Sign was called at or after the key's notAfter.
	ErrKeyExpired = errors.New("jwtsvid: signing key expired")

	// ErrTooLarge: the token is longer than MaxTokenSize.
	ErrTooLarge = errors.New("jwtsvid: token too large")
	// ErrMalformed: not a compact JWS with a JSON object header and
	// payload, or not canonical base64url.
	ErrMalformed = errors.New("jwtsvid: malformed token")
	// ErrAlgorithm: alg missing or not in the allow-list (none, HS*, EdDSA...).
	ErrAlgorithm = errors.New("jwtsvid: algorithm not allowed")
	// ErrHeader: a header parameter is missing (kid), has a bad value
	// (typ), or is not allowed (crit, jwk, jku, x5c, x5u, anything else).
	ErrHeader = errors.New("jwtsvid: header not allowed")
	// ErrSubject: sub is missing or not a SPIFFE ID.
	ErrSubject = errors.New("jwtsvid: invalid subject")
	// ErrKeyNotFound: no key with the token's kid in the bundle of the
	// subject's trust domain.
	ErrKeyNotFound = errors.New("jwtsvid: key not found")
	// ErrKeyMismatch: the key found does not fit alg (type, curve or size).
	ErrKeyMismatch = errors.New("jwtsvid: key does not match algorithm")
	// ErrSignature: the signature does not verify.
	ErrSignature = errors.New("jwtsvid: invalid signature")
	// ErrClaims: exp missing, or a time claim that is not a NumericDate.
	ErrClaims = errors.New("jwtsvid: invalid claims")
	// ErrExpired: now is at or after exp (plus Leeway).
	ErrExpired = errors.New("jwtsvid: token expired")
	// ErrNotYetValid: nbf or iat is after now (plus Leeway).
	ErrNotYetValid = errors.New("jwtsvid: token not yet valid")
	// ErrAudience: aud missing, malformed, or matches none of the expected audiences.
	ErrAudience = errors.New("jwtsvid: audience mismatch")
)

const (
	// MaxTokenSize bounds the tokens Validate parses and Sign produces.
	MaxTokenSize = 8 << 10
	// Leeway is the clock skew tolerated on exp, nbf and iat. It matches
	// x509ca.Backdate.
	Leeway = 30 * time.Second
	// MaxAudiences and MaxAudienceLength bound the audience of a JWT-SVID
	// Writ signs: the server refuses to sign for more values or longer
	// ones, and the Workload API refuses them before asking it.
	MaxAudiences      = 16
	MaxAudienceLength = 256
	// maxNumericDate bounds time claims (year 9999) so they convert to
	// time.Time without overflow.
	maxNumericDate = 253402300799
)

// allowedAlgs is the JWT-SVID algorithm allow-list.
var allowedAlgs = []jose.SignatureAlgorithm{
	jose.ES256, jose.ES384, jose.ES512,
	jose.RS256, jose.RS384, jose.RS512,
	jose.PS256, jose.PS384, jose.PS512,
}

// b64 is base64url without padding, refusing non-zero trailing bits so
// that each token has one encoding. Newlines are refused before decoding.
var b64 = base64.RawURLEncoding.Strict()

// Key is a JWT signing key with its key ID, published in the bundle.
type Key struct {
	ID     string
	Signer crypto.Signer
	// Issuer, if set, is the iss claim of the tokens the key signs (the
	// issuer URL that OIDC discovery publishes).
	Issuer string
}

// BundleSource supplies JWT bundles by trust domain. It is go-spiffe's
// jwtbundle.Source; *jwtbundle.Bundle and *jwtbundle.Set implement it.
type BundleSource = jwtbundle.Source

// Claims are the validated claims of a JWT-SVID.
type Claims struct {
	// ID is the sub claim.
	ID spiffeid.ID
	// Audience is the aud claim, as a list.
	Audience []string
	// Expiry is exp; NotBefore and IssuedAt are zero when absent.
	Expiry    time.Time
	NotBefore time.Time
	IssuedAt  time.Time
	// KeyID is the kid of the key that verified the token.
	KeyID string
	// Raw holds every claim, as encoding/json decodes into an any.
	Raw map[string]any
}

// claims is the payload Sign writes.
type claims struct {
	Issuer   string `json:"iss,omitempty"`
	Subject  string `json:"sub"`
	Audience any    `json:"aud"`
	Expiry   int64  `json:"exp"`
	IssuedAt int64  `json:"iat"`
}

// Sign returns a JWT-SVID for id, signed by key, in compact JWS form, and
// its expiry. The header has alg (ES256 for a P-256 key, ES384 for P-384,
// RS256 for RSA), kid = key.ID and typ "JWT". The claims are sub = id,
// aud (a string for one audience, an array for several; each non-empty),
// exp = min(now+ttl, notAfter) in whole seconds rounded down, and
// iat = now in whole seconds, and iss = key.Issuer if set. notAfter is the end of the key's validity and
// is required: a token never outlives its key.
func Sign(now time.Time, key Key, id spiffeid.ID, audience []string, ttl time.Duration, notAfter time.Time) (string, time.Time, error) {
	s, err := NewSigner(key)
	if err != nil {
		return "", time.Time{}, err
	}
	return s.Sign(now, id, audience, ttl, notAfter)
}

// Signer signs JWT-SVIDs with one key as Sign does, with the key's
// algorithm and the encoded header worked out once: a server signing
// many tokens with its active key makes one Signer for the key. It is
// safe for concurrent use.
type Signer struct {
	key    Key
	alg    jose.SignatureAlgorithm
	hash   crypto.Hash
	header []byte // base64url of the header JSON
	ecSize int    // bytes of R and of S for an ECDSA key; 0 otherwise
	sigLen int    // bytes of a signature
}

// NewSigner returns a Signer for key. It fails with ErrInvalid if the key
// has no ID or signer, and ErrUnsupportedKey if its type or size is not
// allowed.
func NewSigner(key Key) (*Signer, error) {
	return newSigner(key, "JWT")
}

// newSigner returns a Signer whose tokens carry typ in their header.
func newSigner(key Key, typ string) (*Signer, error) {
	switch {
	case key.ID == "":
		return nil, fmt.Errorf("%w: key has no ID", ErrInvalid)
	case key.Signer == nil:
		return nil, fmt.Errorf("%w: key has no signer", ErrInvalid)
	}
	pub := key.Signer.Public()
	alg, err := signingAlg(pub)
	if err != nil {
		return nil, err
	}
	header, err := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}{string(alg), key.ID, typ})
	if err != nil {
		return nil, fmt.Errorf("jwtsvid: encode header: %w", err)
	}
	s := &Signer{key: key, alg: alg, hash: algHash(alg), header: b64.AppendEncode(nil, header)}
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		s.ecSize = (k.Curve.Params().BitSize + 7) / 8
		s.sigLen = 2 * s.ecSize
	case *rsa.PublicKey:
		s.sigLen = k.Size()
	}
	return s, nil
}

// Key returns the signer's key.
func (s *Signer) Key() Key { return s.key }

// Sign signs a JWT-SVID as the package's Sign does with the signer's key.
func (s *Signer) Sign(now time.Time, id spiffeid.ID, audience []string, ttl time.Duration, notAfter time.Time) (string, time.Time, error) {
	switch {
	case now.IsZero():
		return "", time.Time{}, fmt.Errorf("%w: zero time", ErrInvalid)
	case id.IsZero():
		return "", time.Time{}, fmt.Errorf("%w: no SPIFFE ID", ErrInvalid)
	case len(audience) == 0:
		return "", time.Time{}, fmt.Errorf("%w: no audience", ErrInvalid)
	case slices.Contains(audience, ""):
		return "", time.Time{}, fmt.Errorf("%w: empty audience", ErrInvalid)
	case ttl <= 0:
		return "", time.Time{}, fmt.Errorf("%w: TTL %v is not positive", ErrInvalid, ttl)
	case !now.Before(notAfter):
		return "", time.Time{}, fmt.Errorf("%w: key valid until %s", ErrKeyExpired, notAfter.UTC().Format(time.RFC3339))
	}

	exp := now.Add(ttl)
	if exp.After(notAfter) {
		exp = notAfter
	}
	exp = time.Unix(exp.Unix(), 0).UTC()
	if !exp.After(now) {
		return "", time.Time{}, fmt.Errorf("%w: token would expire within a second (TTL %v, key valid until %s)", ErrInvalid, ttl, notAfter.UTC().Format(time.RFC3339))
	}
	c := claims{Issuer: s.key.Issuer, Subject: id.String(), Expiry: exp.Unix(), IssuedAt: now.Unix()}
	if len(audience) == 1 {
		c.Audience = audience[0]
	} else {
		c.Audience = audience
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("jwtsvid: encode claims: %w", err)
	}

	token, err := s.signCompact(payload)
	if err != nil {
		return "", time.Time{}, err
	}
	if len(token) > MaxTokenSize {
		return "", time.Time{}, fmt.Errorf("%w: token of %d bytes exceeds %d", ErrInvalid, len(token), MaxTokenSize)
	}
	return token, exp, nil
}

func signingAlg(pub crypto.PublicKey) (jose.SignatureAlgorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return jose.ES256, nil
		case elliptic.P384():
			return jose.ES384, nil
		}
	case *rsa.PublicKey:
		if k.N != nil && k.N.BitLen() >= 2048 {
			return jose.RS256, nil
		}
	}
	return "", fmt.Errorf("%w: %T", ErrUnsupportedKey, pub)
}

// Validate validates a JWT-SVID and returns its claims. The checks run in
// this order, and the first failure is returned:
//
//  1. Size: at most MaxTokenSize bytes (ErrTooLarge).
//  2. Form: JWS compact serialization only, canonical unpadded base64url,
//     header and payload JSON objects without duplicate members
//     (ErrMalformed). JSON serializations and JWE are refused.
//  3. Header: alg in ES256/384/512, RS256/384/512, PS256/384/512, so none
//     and HMAC are refused (ErrAlgorithm); kid a non-empty string; typ
//     absent, "JWT" or "JOSE"; no other parameter at all, so crit, jwk,
//     jku, x5c, x5u, x5t and b64 are refused (ErrHeader). Keys never come
//     from the token. Then the signature must be non-empty (ErrMalformed).
//  4. sub: a string that parses as a SPIFFE ID (ErrSubject). It is read
//     before the signature is checked only to choose the bundle.
//  5. Key: the kid is looked up only in the bundle of sub's trust domain
//     (ErrKeyNotFound); its type must fit alg: P-256/P-384/P-521 ECDSA for
//     ES256/384/512, RSA of at least 2048 bits for RS* and PS*
//     (ErrKeyMismatch).
//  6. Signature (ErrSignature). Nothing about the claims below is looked
//     at before the signature has verified.
//  7. exp: required NumericDate; now must be before exp+Leeway (ErrClaims,
//     ErrExpired). nbf and iat, if present: NumericDates not after
//     now+Leeway (ErrClaims, ErrNotYetValid).
//  8. aud: required; a string or a non-empty array of strings, none
//     empty. It is accepted if any of its values is byte-for-byte equal to
//     any of audience (ErrAudience).
//
// audience lists the audiences the caller accepts; it must be non-empty,
// without empty strings (ErrInvalid).
func Validate(token string, bundles BundleSource, audience []string, now time.Time) (*Claims, error) {
	if err := checkArgs(bundles, audience, now); err != nil {
		return nil, err
	}
	t, err := parse(token)
	if err != nil {
		return nil, err
	}
	key, err := t.findKey(bundles)
	if err != nil {
		return nil, err
	}
	if err := t.verify(key); err != nil {
		return nil, err
	}
	return t.checkClaims(now, audience, true)
}

// Inspect decodes a JWT-SVID received from its issuer over an
// authenticated channel and checks everything Validate checks except the
// signature: form, header, sub, that a key of the token's kid and fitting
// its alg is in the bundle of sub's trust domain, exp, nbf, iat and aud
// (which must hold one of audience). It is for an agent that has just
// asked the server that holds the signing key for this very token, where
// verifying the signature would only repeat the server's work; a token
// from anyone else must go through Validate. The Claims have no Raw.
func Inspect(token string, bundles BundleSource, audience []string, now time.Time) (*Claims, error) {
	if err := checkArgs(bundles, audience, now); err != nil {
		return nil, err
	}
	t, err := parse(token)
	if err != nil {
		return nil, err
	}
	if _, err := t.findKey(bundles); err != nil {
		return nil, err
	}
	return t.checkClaims(now, audience, false)
}

func checkArgs(bundles BundleSource, audience []string, now time.Time) error {
	switch {
	case now.IsZero():
		return fmt.Errorf("%w: zero time", ErrInvalid)
	case bundles == nil:
		return fmt.Errorf("%w: no bundle source", ErrInvalid)
	case len(audience) == 0:
		return fmt.Errorf("%w: no expected audience", ErrInvalid)
	case slices.Contains(audience, ""):
		return fmt.Errorf("%w: empty expected audience", ErrInvalid)
	}
	return nil
}

// parsedToken is a JWT-SVID decoded once and checked up to, not
// including, its key and signature (steps 1 to 4 of Validate).
type parsedToken struct {
	alg     jose.SignatureAlgorithm
	kid     string
	id      spiffeid.ID
	claims  object
	payload []byte
	signed  string // the signing input: header "." payload, as received
	sig     []byte
}

// parse runs steps 1 to 4 of Validate.
func parse(token string) (parsedToken, error) { return parseAs(token, false) }

// parseAs runs steps 1 to 4 of Validate, or of ValidateAccessToken if
// access is set (which differ only in the typ header allowed).
func parseAs(token string, access bool) (parsedToken, error) {
	if len(token) > MaxTokenSize {
		return parsedToken{}, fmt.Errorf("%w: %d bytes (limit %d)", ErrTooLarge, len(token), MaxTokenSize)
	}

	// 2. Form.
	if i := indexNotTokenChar(token); i >= 0 {
		return parsedToken{}, fmt.Errorf("%w: unexpected character at offset %d (not a compact JWS)", ErrMalformed, i)
	}
	dot1 := strings.IndexByte(token, '.')
	dot2 := -1
	if dot1 >= 0 {
		if i := strings.IndexByte(token[dot1+1:], '.'); i >= 0 {
			dot2 = dot1 + 1 + i
		}
	}
	if dot1 < 0 || dot2 < 0 || strings.IndexByte(token[dot2+1:], '.') >= 0 {
		return parsedToken{}, fmt.Errorf("%w: %d parts (a compact JWS has 3)", ErrMalformed, strings.Count(token, ".")+1)
	}
	// One buffer for the three decoded parts: the header, the payload
	// (which the claims point into) and the signature.
	buf := make([]byte, b64.DecodedLen(dot1)+b64.DecodedLen(dot2-dot1-1)+b64.DecodedLen(len(token)-dot2-1))
	n, err := b64.Decode(buf, []byte(token[:dot1]))
	if err != nil {
		return parsedToken{}, fmt.Errorf("%w: header: %w", ErrMalformed, err)
	}
	headerJSON, buf := buf[:n:n], buf[n:]
	header, err := decodeObject(headerJSON)
	if err != nil {
		return parsedToken{}, fmt.Errorf("%w: header: %w", ErrMalformed, err)
	}
	if n, err = b64.Decode(buf, []byte(token[dot1+1:dot2])); err != nil {
		return parsedToken{}, fmt.Errorf("%w: payload: %w", ErrMalformed, err)
	}
	payload, buf := buf[:n:n], buf[n:]
	claimSet, err := decodeObject(payload)
	if err != nil {
		return parsedToken{}, fmt.Errorf("%w: payload: %w", ErrMalformed, err)
	}

	// 3. Header.
	alg, kid, err := checkHeader(header, access)
	if err != nil {
		return parsedToken{}, err
	}
	if dot2 == len(token)-1 {
		return parsedToken{}, fmt.Errorf("%w: no signature", ErrMalformed)
	}
	if n, err = b64.Decode(buf, []byte(token[dot2+1:])); err != nil {
		return parsedToken{}, fmt.Errorf("%w: signature: %w", ErrMalformed, err)
	}
	sig := buf[:n:n]

	// 4. Subject, only to choose the bundle.
	var sub string
	if err := stringMember(claimSet, "sub", &sub); err != nil {
		return parsedToken{}, fmt.Errorf("%w: %w", ErrSubject, err)
	}
	id, err := spiffeid.FromString(sub)
	if err != nil {
		return parsedToken{}, fmt.Errorf("%w: %w", ErrSubject, err)
	}
	return parsedToken{alg: alg, kid: kid, id: id, claims: claimSet, payload: payload, signed: token[:dot2], sig: sig}, nil
}

// findKey runs step 5 of Validate: the key of the token's kid in the
// bundle of its subject's trust domain, fitting its alg.
func (t *parsedToken) findKey(bundles BundleSource) (crypto.PublicKey, error) {
	td := t.id.TrustDomain()
	bundle, err := bundles.GetJWTBundleForTrustDomain(td)
	if err != nil {
		return nil, fmt.Errorf("%w: no bundle for trust domain %q: %w", ErrKeyNotFound, td.Name(), err)
	}
	if bundle == nil || bundle.TrustDomain() != td {
		return nil, fmt.Errorf("%w: no bundle for trust domain %q", ErrKeyNotFound, td.Name())
	}
	key, ok := bundle.FindJWTAuthority(t.kid)
	if !ok {
		return nil, fmt.Errorf("%w: no key %q in trust domain %q", ErrKeyNotFound, t.kid, td.Name())
	}
	if err := checkKeyAlg(key, t.alg); err != nil {
		return nil, err
	}
	return key, nil
}

// verify runs step 6 of Validate on the parts parse decoded; key has
// passed checkKeyAlg for the token's alg. ECDSA signatures are verified
// by crypto/ecdsa on the ASN.1 form of R || S, built here without an
// intermediate big.Int.
func (t *parsedToken) verify(key crypto.PublicKey) error {
	var buf [sha512.Size]byte
	digest := t.digest(buf[:0])
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		size := (k.Curve.Params().BitSize + 7) / 8
		if len(t.sig) != 2*size {
			return fmt.Errorf("%w: %d-byte signature for %s", ErrSignature, len(t.sig), t.alg)
		}
		var der [maxECDSADER]byte
		sig, ok := ecdsaDER(der[:0], t.sig[:size], t.sig[size:])
		if !ok || !ecdsa.VerifyASN1(k, digest, sig) {
			return fmt.Errorf("%w: %s signature does not verify", ErrSignature, t.alg)
		}
		return nil
	case *rsa.PublicKey:
		h := algHash(t.alg)
		var err error
		switch t.alg {
		case jose.PS256, jose.PS384, jose.PS512:
			err = rsa.VerifyPSS(k, h, digest, t.sig, nil)
		default:
			err = rsa.VerifyPKCS1v15(k, h, digest, t.sig)
		}
		if err != nil {
			return fmt.Errorf("%w: %s signature does not verify", ErrSignature, t.alg)
		}
		return nil
	}
	return fmt.Errorf("%w: %s with a %s", ErrKeyMismatch, t.alg, describeKey(key))
}

// digest appends the hash of the signing input, by the token's alg, to
// dst.
func (t *parsedToken) digest(dst []byte) []byte {
	switch algHash(t.alg) {
	case crypto.SHA384:
		d := sha512.Sum384([]byte(t.signed))
		return append(dst, d[:]...)
	case crypto.SHA512:
		d := sha512.Sum512([]byte(t.signed))
		return append(dst, d[:]...)
	}
	d := sha256.Sum256([]byte(t.signed))
	return append(dst, d[:]...)
}

// maxECDSADER is the size of the longest ASN.1 ECDSA signature of the
// allowed curves (P-521: a sequence of two 67-byte integers).
const maxECDSADER = 3 + 2*(2+67)

// ecdsaDER appends to dst the ASN.1 DER form, SEQUENCE { INTEGER r,
// INTEGER s }, of an ECDSA signature whose r and s are big-endian
// unsigned integers of at most 66 bytes, as crypto/ecdsa.Verify encodes
// them. ok is false if r or s is zero, which never verifies.
func ecdsaDER(dst, r, s []byte) (der []byte, ok bool) {
	r, s = bytes.TrimLeft(r, "\x00"), bytes.TrimLeft(s, "\x00")
	if len(r) == 0 || len(s) == 0 || len(r) > 66 || len(s) > 66 {
		return nil, false
	}
	intLen := func(x []byte) int { return len(x) + int(x[0]>>7) } // a leading 0 keeps it positive
	body := 2 + intLen(r) + 2 + intLen(s)
	dst = append(dst, 0x30) // SEQUENCE
	if body >= 0x80 {
		dst = append(dst, 0x81) // long form, one length byte
	}
	dst = append(dst, byte(body))
	for _, x := range [2][]byte{r, s} {
		dst = append(dst, 0x02, byte(intLen(x))) // INTEGER
		if x[0]&0x80 != 0 {
			dst = append(dst, 0)
		}
		dst = append(dst, x...)
	}
	return dst, true
}

// algHash is the hash of an allowed alg.
func algHash(alg jose.SignatureAlgorithm) crypto.Hash {
	switch alg {
	case jose.ES384, jose.RS384, jose.PS384:
		return crypto.SHA384
	case jose.ES512, jose.RS512, jose.PS512:
		return crypto.SHA512
	}
	return crypto.SHA256
}

// checkClaims runs steps 7 and 8 of Validate and returns the claims, with
// Raw if withRaw.
func (t *parsedToken) checkClaims(now time.Time, audience []string, withRaw bool) (*Claims, error) {
	// 7. Times.
	c := &Claims{ID: t.id, KeyID: t.kid}
	if _, ok := t.claims.get("exp"); !ok {
		return nil, fmt.Errorf("%w: no exp", ErrClaims)
	}
	var err error
	if c.Expiry, err = numericDate(t.claims, "exp"); err != nil {
		return nil, err
	}
	if c.NotBefore, err = numericDate(t.claims, "nbf"); err != nil {
		return nil, err
	}
	if c.IssuedAt, err = numericDate(t.claims, "iat"); err != nil {
		return nil, err
	}
	if err := checkTimes(c, now); err != nil {
		return nil, err
	}

	// 8. Audience.
	if c.Audience, err = audienceClaim(t.claims); err != nil {
		return nil, err
	}
	if err := checkAudience(c, audience); err != nil {
		return nil, err
	}

	if !withRaw {
		return c, nil
	}
	c.Raw = make(map[string]any, len(t.claims))
	for _, m := range t.claims {
		var v any
		switch {
		case m.name == "sub" && isJSONString(m.raw, t.id.String()):
			v = t.id.String() // the string parse decoded, not a copy
		case m.name == "aud" && m.raw[0] == '"':
			v = c.Audience[0] // aud decoded the same way by audienceClaim
		default:
			var err error
			if v, err = decodeAny(m.raw); err != nil {
				return nil, fmt.Errorf("%w: payload: %s: %w", ErrMalformed, m.name, err)
			}
		}
		c.Raw[m.name] = v
	}
	return c, nil
}

// checkTimes checks exp, nbf and iat against now, with Leeway.
func checkTimes(c *Claims, now time.Time) error {
	if !now.Before(c.Expiry.Add(Leeway)) {
		return fmt.Errorf("%w: at %s (exp %s)", ErrExpired, now.UTC().Format(time.RFC3339), c.Expiry.Format(time.RFC3339))
	}
	if c.NotBefore.After(now.Add(Leeway)) {
		return fmt.Errorf("%w: at %s (nbf %s)", ErrNotYetValid, now.UTC().Format(time.RFC3339), c.NotBefore.Format(time.RFC3339))
	}
	if c.IssuedAt.After(now.Add(Leeway)) {
		return fmt.Errorf("%w: at %s (iat %s)", ErrNotYetValid, now.UTC().Format(time.RFC3339), c.IssuedAt.Format(time.RFC3339))
	}
	return nil
}

// checkAudience accepts the token if any of its audiences is one of the
// expected ones.
func checkAudience(c *Claims, audience []string) error {
	if audience == nil {
		// Only ValidateAccessToken passes nil: any audience.
		return nil
	}
	if !slices.ContainsFunc(c.Audience, func(a string) bool { return slices.Contains(audience, a) }) {
		return fmt.Errorf("%w: token audience %q, expected one of %q", ErrAudience, c.Audience, audience)
	}
	return nil
}

// tokenChars marks the bytes of the base64url alphabet and '.'.
var tokenChars = func() (t [256]bool) {
	for c := range 256 {
		t[c] = c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
	}
	return t
}()

// indexNotTokenChar returns the offset of the first byte of s outside the
// base64url alphabet and '.', or -1.
func indexNotTokenChar(s string) int {
	for i := 0; i < len(s); i++ {
		if !tokenChars[s[i]] {
			return i
		}
	}
	return -1
}

// isJSONString reports whether raw is the JSON string of s without
// escapes.
func isJSONString(raw []byte, s string) bool {
	return len(raw) == len(s)+2 && raw[0] == '"' && raw[len(raw)-1] == '"' && string(raw[1:len(raw)-1]) == s
}

// plainString returns the value of a JSON string (raw, quotes included,
// already known to be valid JSON) that has no escapes and is valid UTF-8,
// as encoding/json would decode it; ok is false for other strings, which
// must be decoded by encoding/json.
func plainString(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return "", false
	}
	in := raw[1 : len(raw)-1]
	if bytes.IndexByte(in, '\\') >= 0 || !utf8.Valid(in) {
		return "", false
	}
	if s, ok := knownValue(in); ok {
		return s, true
	}
	return string(in), true
}

// knownValue returns v as a string without allocating if it is one of
// the header values that every token carries.
func knownValue(v []byte) (string, bool) {
	switch string(v) {
	case "JWT":
		return "JWT", true
	case "JOSE":
		return "JOSE", true
	case AccessTokenType:
		return AccessTokenType, true
	}
	for _, alg := range allowedAlgs {
		if string(alg) == string(v) {
			return string(alg), true
		}
	}
	return "", false
}

// stringMember decodes member name of m, which must be a JSON string.
func stringMember(m object, name string, s *string) error {
	raw, ok := m.get(name)
	if !ok {
		return fmt.Errorf("no %s", name)
	}
	if len(raw) == 0 || raw[0] != '"' {
		return fmt.Errorf("%s is not a string", name)
	}
	if plain, ok := plainString(raw); ok {
		*s = plain
		return nil
	}
	v, err := unmarshalAs[string](raw)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	*s = v
	return nil
}

// unmarshalAs decodes raw with encoding/json into a T. The variables of
// its callers stay off the heap, where json.Unmarshal would move them.
func unmarshalAs[T any](raw []byte) (T, error) {
	var v T
	err := json.Unmarshal(raw, &v)
	return v, err
}

func checkHeader(h object, access bool) (jose.SignatureAlgorithm, string, error) {
	var alg string
	if err := stringMember(h, "alg", &alg); err != nil {
		return "", "", fmt.Errorf("%w: %w", ErrAlgorithm, err)
	}
	if !slices.Contains(allowedAlgs, jose.SignatureAlgorithm(alg)) {
		return "", "", fmt.Errorf("%w: %q", ErrAlgorithm, alg)
	}
	for _, m := range h {
		switch name := m.name; name {
		case "alg", "kid", "typ":
		case "jwk", "jku", "x5c", "x5u", "x5t", "x5t#S256":
			return "", "", fmt.Errorf("%w: %q (keys never come from the token)", ErrHeader, name)
		default:
			return "", "", fmt.Errorf("%w: %q", ErrHeader, name)
		}
	}
	var kid string
	if err := stringMember(h, "kid", &kid); err != nil {
		return "", "", fmt.Errorf("%w: %w", ErrHeader, err)
	}
	if kid == "" {
		return "", "", fmt.Errorf("%w: empty kid", ErrHeader)
	}
	if access {
		// RFC 9068 section 4: typ is required, at+jwt or
		// application/at+jwt (media types compare case-insensitively).
		var typ string
		if err := stringMember(h, "typ", &typ); err != nil {
			return "", "", fmt.Errorf("%w: %w", ErrHeader, err)
		}
		if !strings.EqualFold(typ, AccessTokenType) && !strings.EqualFold(typ, "application/"+AccessTokenType) {
			return "", "", fmt.Errorf("%w: typ %q (an access token's is %s)", ErrHeader, typ, AccessTokenType)
		}
	} else if _, ok := h.get("typ"); ok {
		var typ string
		if err := stringMember(h, "typ", &typ); err != nil {
			return "", "", fmt.Errorf("%w: %w", ErrHeader, err)
		}
		if typ != "JWT" && typ != "JOSE" {
			return "", "", fmt.Errorf("%w: typ %q (want JWT or JOSE)", ErrHeader, typ)
		}
	}
	return jose.SignatureAlgorithm(alg), kid, nil
}

// checkKeyAlg checks that key is of the type, curve and size alg needs.
func checkKeyAlg(key crypto.PublicKey, alg jose.SignatureAlgorithm) error {
	var curve elliptic.Curve
	switch alg {
	case jose.ES256:
		curve = elliptic.P256()
	case jose.ES384:
		curve = elliptic.P384()
	case jose.ES512:
		curve = elliptic.P521()
	}
	switch alg {
	case jose.ES256, jose.ES384, jose.ES512:
		if k, ok := key.(*ecdsa.PublicKey); ok && k != nil && k.Curve == curve {
			return nil
		}
	case jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512:
		if k, ok := key.(*rsa.PublicKey); ok && k != nil && k.N != nil && k.N.BitLen() >= 2048 {
			return nil
		}
	}
	return fmt.Errorf("%w: %s with a %s", ErrKeyMismatch, alg, describeKey(key))
}

func describeKey(key crypto.PublicKey) string {
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		if k != nil && k.Curve != nil {
			return "ECDSA " + k.Curve.Params().Name + " key"
		}
	case *rsa.PublicKey:
		if k != nil && k.N != nil {
			return "RSA-" + strconv.Itoa(k.N.BitLen()) + " key"
		}
	}
	return fmt.Sprintf("%T", key)
}

// numericDate decodes an optional NumericDate claim; zero if absent.
func numericDate(m object, name string) (time.Time, error) {
	raw, ok := m.get(name)
	if !ok {
		return time.Time{}, nil
	}
	// A JSON number, not a string that looks like one.
	if len(raw) == 0 || !(raw[0] >= '0' && raw[0] <= '9') {
		return time.Time{}, fmt.Errorf("%w: %s is not a non-negative number", ErrClaims, name)
	}
	if n, ok := smallInteger(raw); ok {
		if n > maxNumericDate {
			return time.Time{}, fmt.Errorf("%w: %s is out of range", ErrClaims, name)
		}
		return time.Unix(n, 0).UTC(), nil
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || f > maxNumericDate {
		return time.Time{}, fmt.Errorf("%w: %s is out of range", ErrClaims, name)
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)).UTC(), nil
}

// audienceClaim decodes aud: a non-empty string, or a non-empty array of
// non-empty strings.
func audienceClaim(m object) ([]string, error) {
	raw, ok := m.get("aud")
	if !ok {
		return nil, fmt.Errorf("%w: no aud", ErrAudience)
	}
	var aud []string
	switch {
	case len(raw) > 0 && raw[0] == '"':
		s, ok := plainString(raw)
		if !ok {
			var err error
			if s, err = unmarshalAs[string](raw); err != nil {
				return nil, fmt.Errorf("%w: aud: %w", ErrAudience, err)
			}
		}
		aud = []string{s}
	case len(raw) > 0 && raw[0] == '[':
		var err error
		if aud, err = unmarshalAs[[]string](raw); err != nil {
			return nil, fmt.Errorf("%w: aud is not an array of strings", ErrAudience)
		}
		if len(aud) == 0 {
			return nil, fmt.Errorf("%w: aud is empty", ErrAudience)
		}
	default:
		return nil, fmt.Errorf("%w: aud is neither a string nor an array", ErrAudience)
	}
	if slices.Contains(aud, "") {
		return nil, fmt.Errorf("%w: aud has an empty value", ErrAudience)
	}
	return aud, nil
}

// signCompact signs payload with key as a compact JWS whose protected
// header is alg, kid and typ. ECDSA signatures are converted from
// the ASN.1 form crypto.Signer returns to the fixed-size R || S of JWS.
func (s *Signer) signCompact(payload []byte) (string, error) {
	buf := make([]byte, 0, len(s.header)+b64.EncodedLen(len(payload))+2+b64.EncodedLen(s.sigLen))
	buf = append(buf, s.header...)
	buf = append(buf, '.')
	buf = b64.AppendEncode(buf, payload)
	hh := s.hash.New()
	hh.Write(buf)
	sig, err := s.key.Signer.Sign(rand.Reader, hh.Sum(nil), s.hash)
	if err != nil {
		return "", fmt.Errorf("jwtsvid: sign: %w", err)
	}
	if s.ecSize > 0 {
		if sig, err = rawECDSASignature(sig, s.ecSize); err != nil {
			return "", fmt.Errorf("jwtsvid: sign: %w", err)
		}
	}
	buf = append(buf, '.')
	buf = b64.AppendEncode(buf, sig)
	return string(buf), nil
}

// rawECDSASignature converts an ASN.1 ECDSA signature to R || S, each
// size bytes.
func rawECDSASignature(der []byte, size int) ([]byte, error) {
	var rs struct{ R, S *big.Int }
	rest, err := asn1.Unmarshal(der, &rs)
	if err != nil || len(rest) > 0 || rs.R == nil || rs.S == nil || rs.R.Sign() <= 0 || rs.S.Sign() <= 0 {
		return nil, errors.New("signer returned a malformed ECDSA signature")
	}
	if (rs.R.BitLen()+7)/8 > size || (rs.S.BitLen()+7)/8 > size {
		return nil, errors.New("signer returned an ECDSA signature too large for its curve")
	}
	out := make([]byte, 2*size)
	rs.R.FillBytes(out[:size])
	rs.S.FillBytes(out[size:])
	return out, nil
}

// decodeAny decodes a JSON value (valid JSON) as json.Unmarshal into an
// any does, without its reflection for plain strings and numbers.
func decodeAny(raw json.RawMessage) (any, error) {
	if str, ok := plainString(raw); ok {
		return str, nil
	}
	if n, ok := smallInteger(raw); ok {
		return float64(n), nil
	}
	if len(raw) > 0 && (raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9') {
		if f, err := strconv.ParseFloat(string(raw), 64); err == nil {
			return f, nil
		}
	}
	var v any
	err := json.Unmarshal(raw, &v)
	return v, err
}

// smallInteger returns the value of raw if it is a JSON number of at most
// 15 decimal digits, no sign, fraction or exponent: exactly the float64
// strconv.ParseFloat would give, without its allocation.
func smallInteger(raw []byte) (int64, bool) {
	if len(raw) == 0 || len(raw) > 15 || raw[0] == '0' && len(raw) > 1 {
		return 0, false
	}
	var n int64
	for _, c := range raw {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}
