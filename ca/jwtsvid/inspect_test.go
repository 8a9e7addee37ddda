package jwtsvid_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"writ.dev/writ/ca/jwtsvid"
)

// TestInspect: Inspect checks everything Validate does but the
// signature, so a token whose signature is wrong passes Inspect and not
// Validate, and every other fault fails both with the same error.
func TestInspect(t *testing.T) {
	src := bundles()
	good := sign(t, "ec256", 5*time.Minute, aud...)
	c, err := jwtsvid.Inspect(good, src, aud, t0)
	if err != nil {
		t.Fatal(err)
	}
	if c.ID != id || !slices.Equal(c.Audience, aud) || !c.Expiry.Equal(t0.Add(5*time.Minute)) || c.KeyID != "ec256" || c.Raw != nil {
		t.Errorf("claims %+v", c)
	}

	forged := craft(t, hdr("ES256", "ec256"), claimsAt(t0), es(key("ec384")))
	if _, err := jwtsvid.Validate(forged, src, aud, t0); !errors.Is(err, jwtsvid.ErrSignature) {
		t.Fatalf("Validate of a forged token: %v", err)
	}
	if _, err := jwtsvid.Inspect(forged, src, aud, t0); err != nil {
		t.Fatalf("Inspect of a token with a wrong signature: %v", err)
	}

	tests := []struct {
		name  string
		token string
		aud   []string
		at    time.Time
		want  error
	}{
		{name: "other audience", token: good, aud: []string{"spiffe://example.org/other"}, at: t0, want: jwtsvid.ErrAudience},
		{name: "expired", token: good, aud: aud, at: t0.Add(5*time.Minute + jwtsvid.Leeway), want: jwtsvid.ErrExpired},
		{name: "unknown kid", token: craft(t, hdr("ES256", "nope"), claimsAt(t0), es(key("ec256"))), aud: aud, at: t0, want: jwtsvid.ErrKeyNotFound},
		{name: "key does not fit alg", token: craft(t, hdr("ES384", "ec256"), claimsAt(t0), es(key("ec384"))), aud: aud, at: t0, want: jwtsvid.ErrKeyMismatch},
		{name: "alg none", token: craft(t, hdr("none", "ec256"), claimsAt(t0), nil), aud: aud, at: t0, want: jwtsvid.ErrAlgorithm},
		{name: "malformed", token: "a.b", aud: aud, at: t0, want: jwtsvid.ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := jwtsvid.Inspect(tt.token, src, tt.aud, tt.at); !errors.Is(err, tt.want) {
				t.Errorf("Inspect: %v, want %v", err, tt.want)
			}
		})
	}
}
