package jwtsvid

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
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
	switch {
	case now.IsZero():
		return "", time.Time{}, fmt.Errorf("%w: zero time", ErrInvalid)
	case key.ID == "":
		return "", time.Time{}, fmt.Errorf("%w: key has no ID", ErrInvalid)
	case key.Signer == nil:
		return "", time.Time{}, fmt.Errorf("%w: key has no signer", ErrInvalid)
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
	alg, err := signingAlg(key.Signer.Public())
	if err != nil {
		return "", time.Time{}, err
	}

	exp := now.Add(ttl)
	if exp.After(notAfter) {
		exp = notAfter
	}
	exp = time.Unix(exp.Unix(), 0).UTC()
	if !exp.After(now) {
		return "", time.Time{}, fmt.Errorf("%w: token would expire within a second (TTL %v, key valid until %s)", ErrInvalid, ttl, notAfter.UTC().Format(time.RFC3339))
	}
	c := claims{Issuer: key.Issuer, Subject: id.String(), Expiry: exp.Unix(), IssuedAt: now.Unix()}
	if len(audience) == 1 {
		c.Audience = audience[0]
	} else {
		c.Audience = audience
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("jwtsvid: encode claims: %w", err)
	}

	var signingKey any
	switch k := key.Signer.(type) {
	case *ecdsa.PrivateKey, *rsa.PrivateKey:
		signingKey = k
	default:
		signingKey = cryptosigner.Opaque(k)
	}
	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: alg, Key: jose.JSONWebKey{Key: signingKey, KeyID: key.ID}},
		(&jose.SignerOptions{}).WithType("JWT"),
	)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("jwtsvid: signer: %w", err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("jwtsvid: sign: %w", err)
	}
	token, err := jws.CompactSerialize()
	if err != nil {
		return "", time.Time{}, fmt.Errorf("jwtsvid: serialize: %w", err)
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
	switch {
	case now.IsZero():
		return nil, fmt.Errorf("%w: zero time", ErrInvalid)
	case bundles == nil:
		return nil, fmt.Errorf("%w: no bundle source", ErrInvalid)
	case len(audience) == 0:
		return nil, fmt.Errorf("%w: no expected audience", ErrInvalid)
	case slices.Contains(audience, ""):
		return nil, fmt.Errorf("%w: empty expected audience", ErrInvalid)
	}
	if len(token) > MaxTokenSize {
		return nil, fmt.Errorf("%w: %d bytes (limit %d)", ErrTooLarge, len(token), MaxTokenSize)
	}

	// 2. Form.
	if i := strings.IndexFunc(token, notTokenChar); i >= 0 {
		return nil, fmt.Errorf("%w: unexpected character at offset %d (not a compact JWS)", ErrMalformed, i)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("%w: %d parts (a compact JWS has 3)", ErrMalformed, len(parts))
	}
	headerJSON, err := b64.DecodeString(parts[0])
	if err != nil {
		return nil, fmt.Errorf("%w: header: %w", ErrMalformed, err)
	}
	header, err := decodeObject(headerJSON)
	if err != nil {
		return nil, fmt.Errorf("%w: header: %w", ErrMalformed, err)
	}
	payload, err := b64.DecodeString(parts[1])
	if err != nil {
		return nil, fmt.Errorf("%w: payload: %w", ErrMalformed, err)
	}
	claimSet, err := decodeObject(payload)
	if err != nil {
		return nil, fmt.Errorf("%w: payload: %w", ErrMalformed, err)
	}

	// 3. Header.
	alg, kid, err := checkHeader(header)
	if err != nil {
		return nil, err
	}
	if parts[2] == "" {
		return nil, fmt.Errorf("%w: no signature", ErrMalformed)
	}

	// 4. Subject, only to choose the bundle.
	var sub string
	if err := stringMember(claimSet, "sub", &sub); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSubject, err)
	}
	id, err := spiffeid.FromString(sub)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSubject, err)
	}

	// 5. Key, by kid, in the subject's trust domain only.
	td := id.TrustDomain()
	bundle, err := bundles.GetJWTBundleForTrustDomain(td)
	if err != nil {
		return nil, fmt.Errorf("%w: no bundle for trust domain %q: %w", ErrKeyNotFound, td.Name(), err)
	}
	if bundle == nil || bundle.TrustDomain() != td {
		return nil, fmt.Errorf("%w: no bundle for trust domain %q", ErrKeyNotFound, td.Name())
	}
	key, ok := bundle.FindJWTAuthority(kid)
	if !ok {
		return nil, fmt.Errorf("%w: no key %q in trust domain %q", ErrKeyNotFound, kid, td.Name())
	}
	if err := checkKeyAlg(key, alg); err != nil {
		return nil, err
	}

	// 6. Signature.
	jws, err := jose.ParseSignedCompact(token, []jose.SignatureAlgorithm{alg})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	verified, err := jws.Verify(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSignature, err)
	}
	if !bytes.Equal(verified, payload) {
		// Cannot happen: both decode the same base64url.
		return nil, fmt.Errorf("%w: payload differs from the verified one", ErrSignature)
	}

	// 7. Times.
	c := &Claims{ID: id, KeyID: kid}
	if _, ok := claimSet["exp"]; !ok {
		return nil, fmt.Errorf("%w: no exp", ErrClaims)
	}
	if c.Expiry, err = numericDate(claimSet, "exp"); err != nil {
		return nil, err
	}
	if c.NotBefore, err = numericDate(claimSet, "nbf"); err != nil {
		return nil, err
	}
	if c.IssuedAt, err = numericDate(claimSet, "iat"); err != nil {
		return nil, err
	}
	if err := checkTimes(c, now); err != nil {
		return nil, err
	}

	// 8. Audience.
	if c.Audience, err = audienceClaim(claimSet); err != nil {
		return nil, err
	}
	if err := checkAudience(c, audience); err != nil {
		return nil, err
	}

	if err := json.Unmarshal(payload, &c.Raw); err != nil {
		return nil, fmt.Errorf("%w: payload: %w", ErrMalformed, err)
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
	if !slices.ContainsFunc(c.Audience, func(a string) bool { return slices.Contains(audience, a) }) {
		return fmt.Errorf("%w: token audience %q, expected one of %q", ErrAudience, c.Audience, audience)
	}
	return nil
}

// notTokenChar reports runes outside the base64url alphabet and '.'.
func notTokenChar(r rune) bool {
	return !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
}

// decodeObject decodes a JSON object into its members, refusing duplicate
// member names and anything after the object.
func decodeObject(data []byte) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("not a JSON object")
	}
	m := make(map[string]json.RawMessage)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		name, ok := tok.(string)
		if !ok {
			return nil, errors.New("member name is not a string")
		}
		if _, dup := m[name]; dup {
			return nil, fmt.Errorf("duplicate member %q", name)
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		m[name] = v
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	return m, nil
}

// stringMember decodes member name of m, which must be a JSON string.
func stringMember(m map[string]json.RawMessage, name string, s *string) error {
	raw, ok := m[name]
	if !ok {
		return fmt.Errorf("no %s", name)
	}
	if len(raw) == 0 || raw[0] != '"' {
		return fmt.Errorf("%s is not a string", name)
	}
	if err := json.Unmarshal(raw, s); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

func checkHeader(h map[string]json.RawMessage) (jose.SignatureAlgorithm, string, error) {
	var alg string
	if err := stringMember(h, "alg", &alg); err != nil {
		return "", "", fmt.Errorf("%w: %w", ErrAlgorithm, err)
	}
	if !slices.Contains(allowedAlgs, jose.SignatureAlgorithm(alg)) {
		return "", "", fmt.Errorf("%w: %q", ErrAlgorithm, alg)
	}
	for name := range h {
		switch name {
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
	if _, ok := h["typ"]; ok {
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
func numericDate(m map[string]json.RawMessage, name string) (time.Time, error) {
	raw, ok := m[name]
	if !ok {
		return time.Time{}, nil
	}
	// A JSON number, not a string that looks like one.
	if len(raw) == 0 || !(raw[0] >= '0' && raw[0] <= '9') {
		return time.Time{}, fmt.Errorf("%w: %s is not a non-negative number", ErrClaims, name)
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
func audienceClaim(m map[string]json.RawMessage) ([]string, error) {
	raw, ok := m["aud"]
	if !ok {
		return nil, fmt.Errorf("%w: no aud", ErrAudience)
	}
	var aud []string
	switch {
	case len(raw) > 0 && raw[0] == '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("%w: aud: %w", ErrAudience, err)
		}
		aud = []string{s}
	case len(raw) > 0 && raw[0] == '[':
		if err := json.Unmarshal(raw, &aud); err != nil {
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
