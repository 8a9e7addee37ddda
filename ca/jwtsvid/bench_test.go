package jwtsvid_test

import (
	"testing"
	"time"

	"writ.dev/writ/ca/jwtsvid"
)

func BenchmarkSign(b *testing.B) {
	for _, kid := range []string{"ec256", "rsa"} {
		b.Run(kid, func(b *testing.B) {
			k := jwtsvid.Key{ID: kid, Signer: key(kid)}
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := jwtsvid.Sign(t0, k, id, aud, 5*time.Minute, t0.Add(time.Hour)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkValidate(b *testing.B) {
	tok := sign(b, "ec256", 5*time.Minute, aud...)
	src := bundles()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := jwtsvid.Validate(tok, src, aud, t0); err != nil {
			b.Fatal(err)
		}
	}
}
