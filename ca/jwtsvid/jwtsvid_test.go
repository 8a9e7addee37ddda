package jwtsvid_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	spiffejwt "github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"writ.dev/writ/ca/jwtsvid"
)

func TestSign(t *testing.T) {
	notAfter := t0.Add(time.Hour)
	tests := []struct {
		name     string
		kid      string
		signer   crypto.Signer
		audience []string
		now      time.Time
		ttl      time.Duration
		wantAlg  string
		wantExp  time.Time
		wantAud  any
	}{
		{"P-256", "ec256", key("ec256"), aud, t0, 5 * time.Minute, "ES256", t0.Add(5 * time.Minute), aud[0]},
		{"P-384", "ec384", key("ec384"), aud, t0, 5 * time.Minute, "ES384", t0.Add(5 * time.Minute), aud[0]},
		{"RSA", "rsa", key("rsa"), aud, t0, 5 * time.Minute, "RS256", t0.Add(5 * time.Minute), aud[0]},
		{"opaque signer", "ec256", opaque{key("ec256")}, aud, t0, 5 * time.Minute, "ES256", t0.Add(5 * time.Minute), aud[0]},
		{"opaque RSA signer", "rsa", opaque{key("rsa")}, aud, t0, 5 * time.Minute, "RS256", t0.Add(5 * time.Minute), aud[0]},
		{"several audiences", "ec256", key("ec256"), []string{"a", "b"}, t0, 5 * time.Minute, "ES256", t0.Add(5 * time.Minute), []any{"a", "b"}},
		{"capped by key notAfter", "ec256", key("ec256"), aud, t0.Add(58 * time.Minute), 5 * time.Minute, "ES256", notAfter, aud[0]},
		{"sub-second now rounds exp down", "ec256", key("ec256"), aud, t0.Add(900 * time.Millisecond), 5 * time.Minute, "ES256", t0.Add(5 * time.Minute), aud[0]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, exp, err := jwtsvid.Sign(tt.now, jwtsvid.Key{ID: tt.kid, Signer: tt.signer}, id, tt.audience, tt.ttl, notAfter)
			if err != nil {
				t.Fatal(err)
			}
			if !exp.Equal(tt.wantExp) {
				t.Errorf("expiry %v, want %v", exp, tt.wantExp)
			}
			h := decodeHeader(t, tok)
			if want := map[string]any{"alg": tt.wantAlg, "kid": tt.kid, "typ": "JWT"}; !maps.Equal(h, want) {
				t.Errorf("header %v, want %v", h, want)
			}
			c := decodeClaims(t, tok)
			if len(c) != 4 || c["sub"] != id.String() || c["exp"] != float64(tt.wantExp.Unix()) || c["iat"] != float64(tt.now.Unix()) {
				t.Errorf("claims %v", c)
			}
			if gotAud, _ := json.Marshal(c["aud"]); string(gotAud) != mustJSON(t, tt.wantAud) {
				t.Errorf("aud %s, want %s", gotAud, mustJSON(t, tt.wantAud))
			}
			got, err := jwtsvid.Validate(tok, bundles(), tt.audience[len(tt.audience)-1:], tt.now)
			if err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if got.ID != id || !got.Expiry.Equal(exp) || got.KeyID != tt.kid || !slices.Equal(got.Audience, tt.audience) {
				t.Errorf("claims %+v", got)
			}
		})
	}
}

func mustJSON(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSignErrors(t *testing.T) {
	ec := jwtsvid.Key{ID: "ec256", Signer: key("ec256")}
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	na := t0.Add(time.Hour)
	tests := []struct {
		name     string
		now      time.Time
		key      jwtsvid.Key
		id       spiffeid.ID
		audience []string
		ttl      time.Duration
		notAfter time.Time
		want     error
	}{
		{"zero time", time.Time{}, ec, id, aud, time.Minute, na, jwtsvid.ErrInvalid},
		{"no kid", t0, jwtsvid.Key{Signer: key("ec256")}, id, aud, time.Minute, na, jwtsvid.ErrInvalid},
		{"no signer", t0, jwtsvid.Key{ID: "x"}, id, aud, time.Minute, na, jwtsvid.ErrInvalid},
		{"zero ID", t0, ec, spiffeid.ID{}, aud, time.Minute, na, jwtsvid.ErrInvalid},
		{"no audience", t0, ec, id, nil, time.Minute, na, jwtsvid.ErrInvalid},
		{"empty audience list", t0, ec, id, []string{}, time.Minute, na, jwtsvid.ErrInvalid},
		{"empty audience value", t0, ec, id, []string{"a", ""}, time.Minute, na, jwtsvid.ErrInvalid},
		{"zero TTL", t0, ec, id, aud, 0, na, jwtsvid.ErrInvalid},
		{"negative TTL", t0, ec, id, aud, -time.Minute, na, jwtsvid.ErrInvalid},
		{"key expired (at notAfter)", na, ec, id, aud, time.Minute, na, jwtsvid.ErrKeyExpired},
		{"key expired (after notAfter)", na.Add(time.Second), ec, id, aud, time.Minute, na, jwtsvid.ErrKeyExpired},
		{"no notAfter", t0, ec, id, aud, time.Minute, time.Time{}, jwtsvid.ErrKeyExpired},
		{"key expires within the second", na.Add(-300 * time.Millisecond), ec, id, aud, time.Minute, na.Add(-100 * time.Millisecond), jwtsvid.ErrInvalid},
		{"P-521 key", t0, jwtsvid.Key{ID: "k", Signer: p521}, id, aud, time.Minute, na, jwtsvid.ErrUnsupportedKey},
		{"Ed25519 key", t0, jwtsvid.Key{ID: "k", Signer: ed}, id, aud, time.Minute, na, jwtsvid.ErrUnsupportedKey},
		{"RSA-1024 key", t0, jwtsvid.Key{ID: "k", Signer: rsa1024}, id, aud, time.Minute, na, jwtsvid.ErrUnsupportedKey},
		{"token too large", t0, ec, id, slices.Repeat([]string{"spiffe://example.org/a-long-audience-value"}, 200), time.Minute, na, jwtsvid.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, exp, err := jwtsvid.Sign(tt.now, tt.key, tt.id, tt.audience, tt.ttl, tt.notAfter)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if tok != "" || !exp.IsZero() {
				t.Error("token returned with error")
			}
		})
	}
}

// TestGoSPIFFEAccepts checks that go-spiffe's validator accepts what Sign
// makes. go-spiffe reads the wall clock, so these tokens are signed now.
func TestGoSPIFFEAccepts(t *testing.T) {
	now := time.Now()
	for _, kid := range []string{"ec256", "ec384", "rsa"} {
		for _, audience := range [][]string{aud, {"a", "b", aud[0]}} {
			t.Run(kid+"/"+strings.Join(audience, ","), func(t *testing.T) {
				tok, exp, err := jwtsvid.Sign(now, jwtsvid.Key{ID: kid, Signer: key(kid)}, id, audience, 5*time.Minute, now.Add(time.Hour))
				if err != nil {
					t.Fatal(err)
				}
				svid, err := spiffejwt.ParseAndValidate(tok, bundles(), aud)
				if err != nil {
					t.Fatalf("go-spiffe ParseAndValidate: %v", err)
				}
				if svid.ID != id || !svid.Expiry.Equal(exp) || !slices.Equal(svid.Audience, audience) {
					t.Errorf("go-spiffe SVID %+v", svid)
				}
				if _, err := spiffejwt.ParseAndValidate(tok, bundles(), []string{"someone-else"}); err == nil {
					t.Error("go-spiffe accepted the wrong audience")
				}
			})
		}
	}
}

// TestValidateAccepts covers tokens Validate must accept beyond Sign's.
func TestValidateAccepts(t *testing.T) {
	base := claimsAt(t0)
	tests := []struct {
		name  string
		token func(t *testing.T) string
		check func(t *testing.T, c *jwtsvid.Claims)
	}{
		{"our token", func(t *testing.T) string { return sign(t, "ec256", time.Minute, aud...) }, nil},
		{"no typ", func(t *testing.T) string {
			return craft(t, map[string]any{"alg": "ES256", "kid": "ec256"}, base, es(key("ec256")))
		}, nil},
		{"typ JOSE", func(t *testing.T) string {
			return craft(t, map[string]any{"alg": "ES256", "kid": "ec256", "typ": "JOSE"}, base, es(key("ec256")))
		}, nil},
		{"ES512", func(t *testing.T) string { return craft(t, hdr("ES512", "ec521"), base, es(key("ec521"))) }, nil},
		{"PS256", func(t *testing.T) string { return craft(t, hdr("PS256", "rsa"), base, ps256(key("rsa"))) }, nil},
		{"aud array, one matches", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "aud", []string{"x", aud[0]}), es(key("ec256")))
		}, func(t *testing.T, c *jwtsvid.Claims) {
			if !slices.Equal(c.Audience, []string{"x", aud[0]}) {
				t.Errorf("Audience %q", c.Audience)
			}
		}},
		{"fractional times, nbf, extra claims", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "exp", 1906632300.5, "nbf", t0.Unix()-10, "iss", "x", "n", 3), es(key("ec256")))
		}, func(t *testing.T, c *jwtsvid.Claims) {
			if !c.Expiry.Equal(time.Unix(1906632300, 5e8)) || !c.NotBefore.Equal(t0.Add(-10*time.Second)) || !c.IssuedAt.Equal(t0) {
				t.Errorf("times %v %v %v", c.Expiry, c.NotBefore, c.IssuedAt)
			}
			if c.Raw["iss"] != "x" || c.Raw["n"] != 3.0 || c.Raw["sub"] != id.String() {
				t.Errorf("Raw %v", c.Raw)
			}
		}},
		{"exp within leeway", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "exp", t0.Add(-jwtsvid.Leeway+time.Second).Unix()), es(key("ec256")))
		}, nil},
		{"nbf within leeway", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "nbf", t0.Add(jwtsvid.Leeway).Unix()), es(key("ec256")))
		}, nil},
		{"whitespace in JSON", func(t *testing.T) string {
			return craft(t, ` { "alg" : "ES256" , "kid":"ec256" } `,
				` {"sub": "`+id.String()+`", "aud" : [ "`+aud[0]+`" ], "exp": `+jsonInt(t0.Add(time.Minute).Unix())+` } `, es(key("ec256")))
		}, nil},
		{"key in other trust domain's bundle, sub there too", func(t *testing.T) string {
			return craft(t, hdr("ES256", "shared"), with(base, "sub", "spiffe://other.example/w"), es(key("other-shared")))
		}, func(t *testing.T, c *jwtsvid.Claims) {
			if c.ID.TrustDomain() != otherTD {
				t.Errorf("ID %v", c.ID)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := jwtsvid.Validate(tt.token(t), bundles(), aud, t0)
			if err != nil {
				t.Fatal(err)
			}
			if c.ID.IsZero() || c.Expiry.IsZero() || c.KeyID == "" || c.Raw == nil {
				t.Errorf("claims %+v", c)
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

func jsonInt(n int64) string { b, _ := json.Marshal(n); return string(b) }

func TestValidateRefuses(t *testing.T) {
	base := claimsAt(t0)
	good := sign(t, "ec256", time.Minute, aud...)
	parts := strings.Split(good, ".")
	pubDER, _ := x509.MarshalPKIXPublicKey(key("ec256").Public())
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	attackerJWK, _ := json.Marshal(jose.JSONWebKey{Key: key("attacker").Public()})
	ecSig := es(key("ec256"))

	tests := []struct {
		name  string
		token func(t *testing.T) string
		want  error
	}{
		// Algorithms.
		{"alg none, no signature", func(t *testing.T) string { return craft(t, hdr("none", "ec256"), base, nil) }, jwtsvid.ErrAlgorithm},
		{"alg none, with signature", func(t *testing.T) string {
			return craft(t, hdr("none", "ec256"), base, func([]byte) []byte { return []byte("x") })
		}, jwtsvid.ErrAlgorithm},
		{"alg None", func(t *testing.T) string { return craft(t, hdr("None", "ec256"), base, ecSig) }, jwtsvid.ErrAlgorithm},
		{"HS256 with public key DER", func(t *testing.T) string { return craft(t, hdr("HS256", "ec256"), base, hs256(pubDER)) }, jwtsvid.ErrAlgorithm},
		{"HS256 with public key PEM", func(t *testing.T) string { return craft(t, hdr("HS256", "ec256"), base, hs256(pubPEM)) }, jwtsvid.ErrAlgorithm},
		{"EdDSA", func(t *testing.T) string { return craft(t, hdr("EdDSA", "ec256"), base, ecSig) }, jwtsvid.ErrAlgorithm},
		{"lowercase es256", func(t *testing.T) string { return craft(t, hdr("es256", "ec256"), base, ecSig) }, jwtsvid.ErrAlgorithm},
		{"no alg", func(t *testing.T) string { return craft(t, map[string]any{"kid": "ec256"}, base, ecSig) }, jwtsvid.ErrAlgorithm},
		{"alg not a string", func(t *testing.T) string { return craft(t, map[string]any{"alg": 1, "kid": "ec256"}, base, ecSig) }, jwtsvid.ErrAlgorithm},

		// Key type must match alg.
		{"RSA key with ES256", func(t *testing.T) string { return craft(t, hdr("ES256", "rsa"), base, es(key("attacker"))) }, jwtsvid.ErrKeyMismatch},
		{"P-256 key with RS256", func(t *testing.T) string { return craft(t, hdr("RS256", "ec256"), base, rs256(key("rsa"))) }, jwtsvid.ErrKeyMismatch},
		{"P-256 key with PS256", func(t *testing.T) string { return craft(t, hdr("PS256", "ec256"), base, ps256(key("rsa"))) }, jwtsvid.ErrKeyMismatch},
		{"P-256 key with ES384", func(t *testing.T) string { return craft(t, hdr("ES384", "ec256"), base, es(key("ec384"))) }, jwtsvid.ErrKeyMismatch},
		{"P-384 key with ES256", func(t *testing.T) string { return craft(t, hdr("ES256", "ec384"), base, ecSig) }, jwtsvid.ErrKeyMismatch},

		// Header parameters: keys never come from the token.
		{"jwk injection", func(t *testing.T) string {
			return craft(t, with(hdr("ES256", "ec256"), "jwk", json.RawMessage(attackerJWK)), base, es(key("attacker")))
		}, jwtsvid.ErrHeader},
		{"jwk injection without kid", func(t *testing.T) string {
			return craft(t, map[string]any{"alg": "ES256", "jwk": json.RawMessage(attackerJWK)}, base, es(key("attacker")))
		}, jwtsvid.ErrHeader},
		{"x5c injection", func(t *testing.T) string {
			return craft(t, with(hdr("ES256", "ec256"), "x5c", []string{"MIIB"}), base, es(key("attacker")))
		}, jwtsvid.ErrHeader},
		{"jku injection", func(t *testing.T) string {
			return craft(t, with(hdr("ES256", "ec256"), "jku", "https://attacker.example/jwks"), base, es(key("attacker")))
		}, jwtsvid.ErrHeader},
		{"x5u injection", func(t *testing.T) string {
			return craft(t, with(hdr("ES256", "ec256"), "x5u", "https://attacker.example/cert"), base, es(key("attacker")))
		}, jwtsvid.ErrHeader},
		{"crit", func(t *testing.T) string {
			return craft(t, with(hdr("ES256", "ec256"), "crit", []string{"exp"}, "exp", 1), base, ecSig)
		}, jwtsvid.ErrHeader},
		{"b64 false", func(t *testing.T) string { return craft(t, with(hdr("ES256", "ec256"), "b64", false), base, ecSig) }, jwtsvid.ErrHeader},
		{"unknown header", func(t *testing.T) string { return craft(t, with(hdr("ES256", "ec256"), "foo", "bar"), base, ecSig) }, jwtsvid.ErrHeader},
		{"no kid", func(t *testing.T) string { return craft(t, map[string]any{"alg": "ES256", "typ": "JWT"}, base, ecSig) }, jwtsvid.ErrHeader},
		{"empty kid", func(t *testing.T) string { return craft(t, hdr("ES256", ""), base, ecSig) }, jwtsvid.ErrHeader},
		{"kid not a string", func(t *testing.T) string { return craft(t, map[string]any{"alg": "ES256", "kid": 1}, base, ecSig) }, jwtsvid.ErrHeader},
		{"typ JWS", func(t *testing.T) string { return craft(t, with(hdr("ES256", "ec256"), "typ", "JWS"), base, ecSig) }, jwtsvid.ErrHeader},
		{"typ lowercase", func(t *testing.T) string { return craft(t, with(hdr("ES256", "ec256"), "typ", "jwt"), base, ecSig) }, jwtsvid.ErrHeader},
		{"typ not a string", func(t *testing.T) string { return craft(t, with(hdr("ES256", "ec256"), "typ", true), base, ecSig) }, jwtsvid.ErrHeader},

		// Keys: only by kid, only in the subject's trust domain.
		{"unknown kid", func(t *testing.T) string { return craft(t, hdr("ES256", "nope"), base, es(key("attacker"))) }, jwtsvid.ErrKeyNotFound},
		{"kid of another trust domain's key", func(t *testing.T) string { return craft(t, hdr("ES256", "other"), base, es(key("other"))) }, jwtsvid.ErrKeyNotFound},
		{"sub in another trust domain, our kid", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "sub", "spiffe://other.example/w"), ecSig)
		}, jwtsvid.ErrKeyNotFound},
		{"sub in another trust domain, shared kid, our key", func(t *testing.T) string {
			return craft(t, hdr("ES256", "shared"), with(base, "sub", "spiffe://other.example/w"), es(key("shared")))
		}, jwtsvid.ErrSignature},
		{"sub in unknown trust domain", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "sub", "spiffe://unknown.example/w"), ecSig)
		}, jwtsvid.ErrKeyNotFound},

		// Signature, before any claim.
		{"tampered payload", func(t *testing.T) string {
			c := decodeClaims(t, good)
			c["sub"] = "spiffe://example.org/admin"
			b, _ := json.Marshal(c)
			return parts[0] + "." + enc.EncodeToString(b) + "." + parts[2]
		}, jwtsvid.ErrSignature},
		{"tampered payload, bad claims too", func(t *testing.T) string {
			c := decodeClaims(t, good)
			c["aud"] = "wrong"
			c["exp"] = 1
			b, _ := json.Marshal(c)
			return parts[0] + "." + enc.EncodeToString(b) + "." + parts[2]
		}, jwtsvid.ErrSignature},
		{"tampered header", func(t *testing.T) string {
			return enc.EncodeToString([]byte(`{"alg":"ES256","kid":"ec256"}`)) + "." + parts[1] + "." + parts[2]
		}, jwtsvid.ErrSignature},
		{"tampered signature", func(t *testing.T) string {
			sig, _ := enc.DecodeString(parts[2])
			sig[10] ^= 1
			return parts[0] + "." + parts[1] + "." + enc.EncodeToString(sig)
		}, jwtsvid.ErrSignature},
		{"truncated signature", func(t *testing.T) string {
			sig, _ := enc.DecodeString(parts[2])
			return parts[0] + "." + parts[1] + "." + enc.EncodeToString(sig[:63])
		}, jwtsvid.ErrSignature},
		{"signed by another key", func(t *testing.T) string { return craft(t, hdr("ES256", "ec256"), base, es(key("attacker"))) }, jwtsvid.ErrSignature},
		{"forged, expired and wrong aud", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "exp", 1, "aud", "wrong"), es(key("attacker")))
		}, jwtsvid.ErrSignature},
		{"forged, no exp, no aud", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "exp", nil, "aud", nil), es(key("attacker")))
		}, jwtsvid.ErrSignature},
		{"ASN.1 ECDSA signature", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), base, func(in []byte) []byte {
				d := crypto.SHA256.New()
				d.Write(in)
				s, _ := key("ec256").Sign(rand.Reader, d.Sum(nil), crypto.SHA256)
				return s
			})
		}, jwtsvid.ErrSignature},

		// Subject.
		{"no sub", func(t *testing.T) string { return craft(t, hdr("ES256", "ec256"), with(base, "sub", nil), ecSig) }, jwtsvid.ErrSubject},
		{"sub not a SPIFFE ID", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "sub", "https://example.org/w"), ecSig)
		}, jwtsvid.ErrSubject},
		{"sub not canonical", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "sub", "spiffe://Example.org/w"), ecSig)
		}, jwtsvid.ErrSubject},
		{"sub with dot segment", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "sub", "spiffe://example.org/a/../admin"), ecSig)
		}, jwtsvid.ErrSubject},
		{"sub not a string", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "sub", []string{id.String()}), ecSig)
		}, jwtsvid.ErrSubject},

		// Claims, validly signed.
		{"missing exp", func(t *testing.T) string { return craft(t, hdr("ES256", "ec256"), with(base, "exp", nil), ecSig) }, jwtsvid.ErrClaims},
		{"exp as string", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "exp", jsonInt(t0.Add(time.Hour).Unix())), ecSig)
		}, jwtsvid.ErrClaims},
		{"exp null", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), `{"sub":"`+id.String()+`","aud":"`+aud[0]+`","exp":null}`, ecSig)
		}, jwtsvid.ErrClaims},
		{"exp negative", func(t *testing.T) string { return craft(t, hdr("ES256", "ec256"), with(base, "exp", -1), ecSig) }, jwtsvid.ErrClaims},
		{"exp huge", func(t *testing.T) string { return craft(t, hdr("ES256", "ec256"), with(base, "exp", 1e300), ecSig) }, jwtsvid.ErrClaims},
		{"expired", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "exp", t0.Add(-jwtsvid.Leeway).Unix()), ecSig)
		}, jwtsvid.ErrExpired},
		{"expired long ago", func(t *testing.T) string { return craft(t, hdr("ES256", "ec256"), with(base, "exp", 1), ecSig) }, jwtsvid.ErrExpired},
		{"nbf in the future", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "nbf", t0.Add(jwtsvid.Leeway+time.Second).Unix()), ecSig)
		}, jwtsvid.ErrNotYetValid},
		{"iat in the future", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "iat", t0.Add(time.Hour).Unix()), ecSig)
		}, jwtsvid.ErrNotYetValid},
		{"nbf not a number", func(t *testing.T) string { return craft(t, hdr("ES256", "ec256"), with(base, "nbf", "soon"), ecSig) }, jwtsvid.ErrClaims},
		{"missing aud", func(t *testing.T) string { return craft(t, hdr("ES256", "ec256"), with(base, "aud", nil), ecSig) }, jwtsvid.ErrAudience},
		{"wrong aud", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "aud", "spiffe://example.org/other"), ecSig)
		}, jwtsvid.ErrAudience},
		{"aud differs in case", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "aud", strings.ToUpper(aud[0])), ecSig)
		}, jwtsvid.ErrAudience},
		{"aud prefix", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "aud", aud[0]+"x"), ecSig)
		}, jwtsvid.ErrAudience},
		{"aud empty array", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "aud", []string{}), ecSig)
		}, jwtsvid.ErrAudience},
		{"aud empty string", func(t *testing.T) string { return craft(t, hdr("ES256", "ec256"), with(base, "aud", ""), ecSig) }, jwtsvid.ErrAudience},
		{"aud array with empty string", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "aud", []string{aud[0], ""}), ecSig)
		}, jwtsvid.ErrAudience},
		{"aud array with number", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "aud", []any{aud[0], 1}), ecSig)
		}, jwtsvid.ErrAudience},
		{"aud array with null", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "aud", []any{aud[0], nil}), ecSig)
		}, jwtsvid.ErrAudience},
		{"aud object", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "aud", map[string]any{"a": aud[0]}), ecSig)
		}, jwtsvid.ErrAudience},

		// Size and form.
		{"oversize", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), with(base, "pad", strings.Repeat("a", jwtsvid.MaxTokenSize)), ecSig)
		}, jwtsvid.ErrTooLarge},
		{"empty", func(*testing.T) string { return "" }, jwtsvid.ErrMalformed},
		{"two parts", func(*testing.T) string { return parts[0] + "." + parts[1] }, jwtsvid.ErrMalformed},
		{"four parts", func(*testing.T) string { return good + "." + parts[2] }, jwtsvid.ErrMalformed},
		{"JWE-like, five parts", func(*testing.T) string { return strings.Join([]string{parts[0], "", parts[1], parts[2], "AAAA"}, ".") }, jwtsvid.ErrMalformed},
		{"empty signature", func(*testing.T) string { return parts[0] + "." + parts[1] + "." }, jwtsvid.ErrMalformed},
		{"detached payload", func(*testing.T) string { return parts[0] + ".." + parts[2] }, jwtsvid.ErrMalformed},
		{"JSON flattened serialization", func(t *testing.T) string {
			jws, err := jose.ParseSignedCompact(good, []jose.SignatureAlgorithm{jose.ES256})
			if err != nil {
				t.Fatal(err)
			}
			return jws.FullSerialize()
		}, jwtsvid.ErrMalformed},
		{"JSON general serialization", func(*testing.T) string {
			return `{"payload":"` + parts[1] + `","signatures":[{"protected":"` + parts[0] + `","signature":"` + parts[2] + `"}]}`
		}, jwtsvid.ErrMalformed},
		{"leading whitespace", func(*testing.T) string { return " " + good }, jwtsvid.ErrMalformed},
		{"newline inside", func(*testing.T) string { return parts[0] + ".\n" + parts[1] + "." + parts[2] }, jwtsvid.ErrMalformed},
		{"padded base64", func(*testing.T) string { return parts[0] + "=." + parts[1] + "." + parts[2] }, jwtsvid.ErrMalformed},
		{"standard base64 alphabet", func(t *testing.T) string {
			return strings.NewReplacer("-", "+", "_", "/").Replace(craft(t, hdr("ES256", "ec256"), with(base, "x", "\xff\xfe\xfd>?"), ecSig))
		}, jwtsvid.ErrMalformed},
		{"non-canonical base64 (trailing bits)", func(t *testing.T) string {
			// A 2-character final quantum carries 4 spare bits, which must be zero.
			tok := craft(t, hdr("ES256", "ec256"), with(base, "x", "ab"), ecSig)
			p := strings.Split(tok, ".")
			if len(p[1])%4 != 2 {
				p[1] = enc.EncodeToString(append(mustDecode(t, p[1]), ' '))
			}
			if len(p[1])%4 != 2 {
				p[1] = enc.EncodeToString(append(mustDecode(t, p[1]), ' '))
			}
			last := p[1][len(p[1])-1]
			i := strings.IndexByte(b64Alphabet, last)
			p[1] = p[1][:len(p[1])-1] + string(b64Alphabet[i|1])
			if p[1][len(p[1])-1] == last {
				p[1] = p[1][:len(p[1])-1] + string(b64Alphabet[i&^1])
			}
			return strings.Join(p, ".")
		}, jwtsvid.ErrMalformed},
		{"header not JSON", func(t *testing.T) string { return craft(t, "not json", base, ecSig) }, jwtsvid.ErrMalformed},
		{"header an array", func(t *testing.T) string { return craft(t, []string{"alg"}, base, ecSig) }, jwtsvid.ErrMalformed},
		{"duplicate header member", func(t *testing.T) string {
			return craft(t, `{"alg":"none","kid":"ec256","alg":"ES256"}`, base, ecSig)
		}, jwtsvid.ErrMalformed},
		{"duplicate header member, escaped", func(t *testing.T) string {
			return craft(t, `{"alg":"ES256","kid":"ec256","\u0061lg":"none"}`, base, ecSig)
		}, jwtsvid.ErrMalformed},
		{"data after header object", func(t *testing.T) string { return craft(t, `{"alg":"ES256","kid":"ec256"}{}`, base, ecSig) }, jwtsvid.ErrMalformed},
		{"payload not JSON", func(t *testing.T) string { return craft(t, hdr("ES256", "ec256"), "not json", ecSig) }, jwtsvid.ErrMalformed},
		{"payload a string", func(t *testing.T) string { return craft(t, hdr("ES256", "ec256"), `"`+id.String()+`"`, ecSig) }, jwtsvid.ErrMalformed},
		{"duplicate sub", func(t *testing.T) string {
			return craft(t, hdr("ES256", "ec256"), `{"sub":"spiffe://other.example/w","aud":"`+aud[0]+`","exp":`+jsonInt(t0.Add(time.Minute).Unix())+`,"sub":"`+id.String()+`"}`, ecSig)
		}, jwtsvid.ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := jwtsvid.Validate(tt.token(t), bundles(), aud, t0)
			t.Log(err)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if c != nil {
				t.Error("claims returned with error")
			}
		})
	}
}

const b64Alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

func mustDecode(t *testing.T, s string) []byte {
	b, err := enc.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestValidateArguments(t *testing.T) {
	good := sign(t, "ec256", time.Minute, aud...)
	tests := []struct {
		name     string
		source   jwtsvid.BundleSource
		audience []string
		now      time.Time
		want     error
	}{
		{"no audience", bundles(), nil, t0, jwtsvid.ErrInvalid},
		{"empty expected audience", bundles(), []string{""}, t0, jwtsvid.ErrInvalid},
		{"nil source", nil, aud, t0, jwtsvid.ErrInvalid},
		{"zero time", bundles(), aud, time.Time{}, jwtsvid.ErrInvalid},
		{"source fails", errSource{}, aud, t0, jwtsvid.ErrKeyNotFound},
		{"source returns another trust domain's bundle", wrongSource{}, aud, t0, jwtsvid.ErrKeyNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := jwtsvid.Validate(good, tt.source, tt.audience, tt.now)
			if !errors.Is(err, tt.want) || c != nil {
				t.Fatalf("= %v, %v; want %v", c, err, tt.want)
			}
		})
	}
	t.Run("source returns another trust domain's bundle with the kid", func(t *testing.T) {
		// sub is in td, but the key is otherTD's: a confused source must not
		// make it valid.
		tok := craft(t, hdr("ES256", "other"), claimsAt(t0), es(key("other")))
		if _, err := jwtsvid.Validate(tok, bundles(), aud, t0); !errors.Is(err, jwtsvid.ErrKeyNotFound) {
			t.Fatalf("honest source: err = %v", err)
		}
		if c, err := jwtsvid.Validate(tok, wrongSource{}, aud, t0); !errors.Is(err, jwtsvid.ErrKeyNotFound) || c != nil {
			t.Fatalf("= %v, %v; want ErrKeyNotFound", c, err)
		}
	})
	t.Run("any of several expected audiences", func(t *testing.T) {
		if _, err := jwtsvid.Validate(good, bundles(), []string{"x", aud[0]}, t0); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("a single bundle is a source", func(t *testing.T) {
		b, _ := bundles().GetJWTBundleForTrustDomain(td)
		if _, err := jwtsvid.Validate(good, b, aud, t0); err != nil {
			t.Fatal(err)
		}
	})
}
