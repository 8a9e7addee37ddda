package jwtsvid_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/jwtsvid"
)

var (
	td      = spiffeid.RequireTrustDomainFromString("example.org")
	otherTD = spiffeid.RequireTrustDomainFromString("other.example")
	id      = spiffeid.RequireFromPath(td, "/ns/prod/sa/web")
	t0      = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	aud     = []string{"spiffe://example.org/db"}
)

// Keys of the local trust domain (td) by kid, and of otherTD.
var keys = sync.OnceValue(func() map[string]crypto.Signer {
	ec := func(c elliptic.Curve) crypto.Signer {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return map[string]crypto.Signer{
		"ec256":        ec(elliptic.P256()),
		"ec384":        ec(elliptic.P384()),
		"ec521":        ec(elliptic.P521()),
		"rsa":          rk,
		"shared":       ec(elliptic.P256()), // same kid in both trust domains
		"other":        ec(elliptic.P256()), // otherTD only
		"other-shared": ec(elliptic.P256()), // otherTD's "shared"
		"attacker":     ec(elliptic.P256()), // in no bundle
	}
})

func key(kid string) crypto.Signer { return keys()[kid] }

func bundles() *jwtbundle.Set {
	local := jwtbundle.New(td)
	for _, kid := range []string{"ec256", "ec384", "ec521", "rsa", "shared"} {
		if err := local.AddJWTAuthority(kid, key(kid).Public()); err != nil {
			panic(err)
		}
	}
	other := jwtbundle.New(otherTD)
	_ = other.AddJWTAuthority("other", key("other").Public())
	_ = other.AddJWTAuthority("shared", key("other-shared").Public())
	return jwtbundle.NewSet(local, other)
}

func sign(t testing.TB, kid string, ttl time.Duration, audience ...string) string {
	t.Helper()
	tok, _, err := jwtsvid.Sign(t0, jwtsvid.Key{ID: kid, Signer: key(kid)}, id, audience, ttl, t0.Add(24*time.Hour))
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return tok
}

var enc = base64.RawURLEncoding

// craft builds a compact JWS from any header and claims (marshalled as
// given, or used verbatim if they are strings) and a signing function over
// the signing input.
func craft(t testing.TB, header, claims any, signFn func(input []byte) []byte) string {
	t.Helper()
	part := func(v any) string {
		if s, ok := v.(string); ok {
			return enc.EncodeToString([]byte(s))
		}
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return enc.EncodeToString(b)
	}
	input := part(header) + "." + part(claims)
	var sig []byte
	if signFn != nil {
		sig = signFn([]byte(input))
	}
	return input + "." + enc.EncodeToString(sig)
}

// es signs as JWS ES256/384/512 do: raw r||s of the curve's size.
func es(k crypto.Signer) func([]byte) []byte {
	return func(input []byte) []byte {
		ek := k.(*ecdsa.PrivateKey)
		size := (ek.Curve.Params().BitSize + 7) / 8
		var h crypto.Hash
		switch size {
		case 32:
			h = crypto.SHA256
		case 48:
			h = crypto.SHA384
		default:
			h = crypto.SHA512
		}
		d := h.New()
		d.Write(input)
		r, s, err := ecdsa.Sign(rand.Reader, ek, d.Sum(nil))
		if err != nil {
			panic(err)
		}
		out := make([]byte, 2*size)
		r.FillBytes(out[:size])
		s.FillBytes(out[size:])
		return out
	}
}

func rs256(k crypto.Signer) func([]byte) []byte {
	return func(input []byte) []byte {
		d := sha256.Sum256(input)
		sig, err := rsa.SignPKCS1v15(rand.Reader, k.(*rsa.PrivateKey), crypto.SHA256, d[:])
		if err != nil {
			panic(err)
		}
		return sig
	}
}

func ps256(k crypto.Signer) func([]byte) []byte {
	return func(input []byte) []byte {
		d := sha256.Sum256(input)
		sig, err := rsa.SignPSS(rand.Reader, k.(*rsa.PrivateKey), crypto.SHA256, d[:], nil)
		if err != nil {
			panic(err)
		}
		return sig
	}
}

func hs256(secret []byte) func([]byte) []byte {
	return func(input []byte) []byte {
		m := hmac.New(sha256.New, secret)
		m.Write(input)
		return m.Sum(nil)
	}
}

func hdr(alg, kid string) map[string]any {
	return map[string]any{"alg": alg, "kid": kid, "typ": "JWT"}
}

func claimsAt(now time.Time) map[string]any {
	return map[string]any{
		"sub": id.String(),
		"aud": aud[0],
		"exp": now.Add(5 * time.Minute).Unix(),
		"iat": now.Unix(),
	}
}

func with(m map[string]any, kv ...any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(out, kv[i].(string))
		} else {
			out[kv[i].(string)] = kv[i+1]
		}
	}
	return out
}

// errSource is a bundle source that always fails.
type errSource struct{}

func (errSource) GetJWTBundleForTrustDomain(spiffeid.TrustDomain) (*jwtbundle.Bundle, error) {
	return nil, errors.New("source down")
}

// wrongSource answers every trust domain with otherTD's bundle.
type wrongSource struct{}

func (wrongSource) GetJWTBundleForTrustDomain(spiffeid.TrustDomain) (*jwtbundle.Bundle, error) {
	return bundles().GetJWTBundleForTrustDomain(otherTD)
}

// opaque hides the concrete key type, as a KMS signer would.
type opaque struct{ s crypto.Signer }

func (o opaque) Public() crypto.PublicKey { return o.s.Public() }
func (o opaque) Sign(r io.Reader, d []byte, opts crypto.SignerOpts) ([]byte, error) {
	return o.s.Sign(r, d, opts)
}

func decodeHeader(t testing.TB, token string) map[string]any {
	t.Helper()
	b, err := enc.DecodeString(strings.Split(token, ".")[0])
	if err != nil {
		t.Fatal(err)
	}
	var h map[string]any
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatal(err)
	}
	return h
}

func decodeClaims(t testing.TB, token string) map[string]any {
	t.Helper()
	b, err := enc.DecodeString(strings.Split(token, ".")[1])
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c
}
