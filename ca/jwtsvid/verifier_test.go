package jwtsvid_test

import (
	"errors"
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
