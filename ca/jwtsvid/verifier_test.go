package jwtsvid_test

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"

	"writ.dev/writ/ca/jwtsvid"
)

// TestVerifierRemembersOnlyWhatStillHolds validates a token once, then
// checks that a remembered token is refused exactly when Validate would
// refuse it: expired, wrong audience, key removed or replaced.
func TestVerifierRemembersOnlyWhatStillHolds(t *testing.T) {
	tok := sign(t, "ec256", 5*time.Minute, aud...)
	v := jwtsvid.NewVerifier(0)
	src := bundles()
	first, err := v.Validate(tok, src, aud, t0)
	if err != nil {
		t.Fatal(err)
	}
	again, err := v.Validate(tok, src, aud, t0.Add(time.Minute))
	if err != nil || again.ID != first.ID {
		t.Fatalf("remembered token refused: %v", err)
	}

	for _, tc := range []struct {
		name    string
		bundles jwtsvid.BundleSource
		aud     []string
		now     time.Time
		want    error
	}{
		{name: "expired", bundles: src, aud: aud, now: t0.Add(time.Hour), want: jwtsvid.ErrExpired},
		{name: "wrong audience", bundles: src, aud: []string{"other"}, now: t0, want: jwtsvid.ErrAudience},
		{name: "key removed", bundles: without(src, "ec256"), aud: aud, now: t0, want: jwtsvid.ErrKeyNotFound},
		{name: "key replaced", bundles: replaced(src, "ec256", "attacker"), aud: aud, now: t0, want: jwtsvid.ErrSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := jwtsvid.NewVerifier(0)
			if _, err := v.Validate(tok, src, aud, t0); err != nil {
				t.Fatal(err)
			}
			_, err := v.Validate(tok, tc.bundles, tc.aud, tc.now)
			if !errors.Is(err, tc.want) {
				t.Fatalf("remembered token: %v, want %v", err, tc.want)
			}
			_, direct := jwtsvid.Validate(tok, tc.bundles, tc.aud, tc.now)
			if !errors.Is(direct, tc.want) {
				t.Fatalf("Validate disagrees: %v", direct)
			}
		})
	}

	// A different token (one changed byte of signature) is never a hit.
	tampered := tok[:len(tok)-2] + flip(tok[len(tok)-2]) + tok[len(tok)-1:]
	if _, err := v.Validate(tampered, src, aud, t0); err == nil {
		t.Fatal("tampered token accepted after the original was remembered")
	}
}

func TestVerifierBounded(t *testing.T) {
	v := jwtsvid.NewVerifier(4)
	src := bundles()
	for i := range 20 {
		tok := sign(t, "ec256", time.Duration(i+1)*time.Minute, aud...)
		if _, err := v.Validate(tok, src, aud, t0); err != nil {
			t.Fatal(err)
		}
	}
	if n := jwtsvid.VerifierLen(v); n > 4 {
		t.Fatalf("verifier keeps %d tokens, limit 4", n)
	}

	// Full of expired tokens: they go first, and what was just put stays.
	v = jwtsvid.NewVerifier(16)
	for i := range 16 {
		if _, err := v.Validate(sign(t, "ec256", time.Duration(i+1)*time.Second, aud...), src, aud, t0); err != nil {
			t.Fatal(err)
		}
	}
	later := t0.Add(time.Minute)
	for i := range 8 {
		tok, _, err := jwtsvid.Sign(later, jwtsvid.Key{ID: "ec256", Signer: key("ec256")}, id, aud, time.Duration(i+1)*time.Hour, later.Add(24*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Validate(tok, src, aud, later); err != nil {
			t.Fatal(err)
		}
		if n := jwtsvid.VerifierLen(v); n != i+1 {
			t.Fatalf("after %d fresh tokens the verifier keeps %d; want the expired ones gone and the fresh ones kept", i+1, n)
		}
	}
}

func flip(c byte) string {
	if c == 'A' {
		return "B"
	}
	return "A"
}

func without(src *jwtbundle.Set, kid string) *jwtbundle.Set {
	b, _ := src.Get(td)
	c := b.Clone()
	c.RemoveJWTAuthority(kid)
	o, _ := src.Get(otherTD)
	return jwtbundle.NewSet(c, o)
}

func replaced(src *jwtbundle.Set, kid, with string) *jwtbundle.Set {
	b, _ := src.Get(td)
	c := b.Clone()
	c.RemoveJWTAuthority(kid)
	_ = c.AddJWTAuthority(kid, key(with).Public())
	o, _ := src.Get(otherTD)
	return jwtbundle.NewSet(c, o)
}

func BenchmarkVerifierRepeatedToken(b *testing.B) {
	tok := sign(b, "ec256", 5*time.Minute, aud...)
	src := bundles()
	v := jwtsvid.NewVerifier(0)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Validate(tok, src, aud, t0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifierFirstSeenVsES256 times, interleaved in one loop so that
// both see the same machine state, a raw ES256 verification (SHA-256 of
// the signing input and crypto/ecdsa.VerifyASN1, the signature already
// decoded and in ASN.1) and Verifier.Validate of a token it has never
// seen. It reports "rate-%-of-raw", the Verifier's rate as a percentage
// of the raw verification rate.
func BenchmarkVerifierFirstSeenVsES256(b *testing.B) {
	const pool = 512
	toks := make([]string, pool)
	for i := range toks {
		toks[i] = sign(b, "ec256", time.Duration(i+1)*time.Second+time.Minute, aud...)
	}
	dot := strings.LastIndexByte(toks[0], '.')
	input := []byte(toks[0][:dot])
	rawSig, err := base64.RawURLEncoding.DecodeString(toks[0][dot+1:])
	if err != nil || len(rawSig) != 64 {
		b.Fatalf("signature: %v (%d bytes)", err, len(rawSig))
	}
	sig, err := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(rawSig[:32]), new(big.Int).SetBytes(rawSig[32:])})
	if err != nil {
		b.Fatal(err)
	}
	pub := key("ec256").Public().(*ecdsa.PublicKey)
	src := bundles()
	v := jwtsvid.NewVerifier(pool)
	var rawD, vD time.Duration
	n := 0
	b.ReportAllocs()
	for b.Loop() {
		i := n % pool
		if i == 0 {
			v = jwtsvid.NewVerifier(pool) // every token is new to it
		}
		t1 := time.Now()
		h := sha256.Sum256(input)
		if !ecdsa.VerifyASN1(pub, h[:], sig) {
			b.Fatal("raw verification failed")
		}
		t2 := time.Now()
		if _, err := v.Validate(toks[i], src, aud, t0); err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		rawD += t2.Sub(t1)
		vD += t3.Sub(t2)
		n++
	}
	rawNs := float64(rawD.Nanoseconds()) / float64(n)
	vNs := float64(vD.Nanoseconds()) / float64(n)
	b.ReportMetric(rawNs, "raw-ES256-ns/op")
	b.ReportMetric(vNs, "verifier-ns/op")
	b.ReportMetric(100*rawNs/vNs, "rate-%-of-raw")
}
