package jwtsvid_test

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"writ.dev/writ/ca/jwtsvid"
)

var sentinels = []error{
	jwtsvid.ErrInvalid, jwtsvid.ErrTooLarge, jwtsvid.ErrMalformed, jwtsvid.ErrAlgorithm,
	jwtsvid.ErrHeader, jwtsvid.ErrSubject, jwtsvid.ErrKeyNotFound, jwtsvid.ErrKeyMismatch,
	jwtsvid.ErrSignature, jwtsvid.ErrClaims, jwtsvid.ErrExpired, jwtsvid.ErrNotYetValid,
	jwtsvid.ErrAudience,
}

// sameSentinel returns the sentinel both a and b wrap, or nil.
func sameSentinel(a, b error) error {
	for _, s := range sentinels {
		if errors.Is(a, s) && errors.Is(b, s) {
			return s
		}
	}
	return nil
}

func FuzzValidate(f *testing.F) {
	base := claimsAt(t0)
	good := sign(f, "ec256", time.Minute, aud...)
	p := strings.Split(good, ".")
	for _, seed := range []string{
		good,
		sign(f, "ec384", time.Minute, aud...),
		sign(f, "rsa", time.Minute, "a", aud[0]),
		craft(f, hdr("PS256", "rsa"), base, ps256(key("rsa"))),
		craft(f, hdr("ES512", "ec521"), base, es(key("ec521"))),
		craft(f, hdr("none", "ec256"), base, nil),
		craft(f, hdr("HS256", "ec256"), base, hs256([]byte("secret"))),
		craft(f, hdr("ES256", "rsa"), base, es(key("ec256"))),
		craft(f, with(hdr("ES256", "ec256"), "jwk", map[string]any{"kty": "EC"}), base, es(key("ec256"))),
		craft(f, with(hdr("ES256", "ec256"), "crit", []string{"b64"}, "b64", false), base, es(key("ec256"))),
		craft(f, hdr("ES256", "ec256"), with(base, "exp", nil), es(key("ec256"))),
		craft(f, hdr("ES256", "ec256"), with(base, "exp", 1.5e9, "nbf", 2e9, "aud", []any{"x", nil}), es(key("ec256"))),
		craft(f, hdr("ES256", "ec256"), with(base, "sub", "spiffe://other.example/w"), es(key("ec256"))),
		craft(f, `{"alg":"ES256","kid":"ec256","alg":"none"}`, base, es(key("ec256"))),
		// The narrow form the one-pass reader takes, and its edges.
		craft(f, ` { "alg" : "ES256" , "kid":"ec256","typ":"JOSE" } `, base, es(key("ec256"))),
		craft(f, `{"alg":"ES256","kid":"ec\u0032256"}`, base, es(key("ec256"))),
		craft(f, hdr("ES256", "ec256"), fmt.Sprintf(`{"sub":"spiffe:\/\/example.org\/ns\/prod\/sa\/web","aud":["x",%q],"exp":%d.5,"iat":%de0,"n":null,"t":true}`, aud[0], t0.Add(time.Minute).Unix(), t0.Unix()), es(key("ec256"))),
		craft(f, hdr("ES256", "ec256"), fmt.Sprintf(`{"sub":%q,"aud":"\u0078","exp":%d,"o":{"a":[1]}}`, id.String(), t0.Add(time.Minute).Unix()), es(key("ec256"))),
		craft(f, hdr("ES256", "ec256"), fmt.Sprintf(`{"sub":%q,"aud":%q,"exp":%d,"exp":1}`, id.String(), aud[0], t0.Add(time.Minute).Unix()), es(key("ec256"))),
		craft(f, hdr("ES256", "ec256"), fmt.Sprintf(`{"sub":%q,"aud":%q,"exp":0%d}`, id.String(), aud[0], t0.Add(time.Minute).Unix()), es(key("ec256"))),
		p[0] + "." + p[1] + ".",
		p[0] + ".." + p[2],
		`{"payload":"` + p[1] + `","signatures":[]}`,
		"", ".", "..", "...", "a.b.c",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, token string) {
		c, err := jwtsvid.Validate(token, bundles(), aud, t0)
		// A Verifier decides as Validate does, the first time and when
		// it remembers the token.
		v := jwtsvid.NewVerifier(4)
		for range 2 {
			vc, verr := v.Validate(token, bundles(), aud, t0)
			if (verr == nil) != (err == nil) || err != nil && sameSentinel(err, verr) == nil {
				t.Fatalf("Verifier: %v; Validate: %v", verr, err)
			}
			if err == nil && !reflect.DeepEqual(*vc, *c) {
				t.Fatalf("Verifier's claims %+v; Validate's %+v", vc, c)
			}
		}
		if err != nil {
			if c != nil {
				t.Fatal("claims returned with error")
			}
			n := 0
			for _, s := range sentinels {
				if errors.Is(err, s) {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("error wraps %d sentinels: %v", n, err)
			}
			return
		}
		if len(token) > jwtsvid.MaxTokenSize || c.ID.IsZero() || c.KeyID == "" || !t0.Before(c.Expiry.Add(jwtsvid.Leeway)) || len(c.Audience) == 0 {
			t.Fatalf("accepted questionable token %q: %+v", token, c)
		}
	})
}
