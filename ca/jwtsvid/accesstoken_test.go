package jwtsvid_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"writ.dev/writ/ca/jwtsvid"
)

func accessClaims(exp time.Time) []byte {
	return fmt.Appendf(nil, `{"iss":"https://oauth.example.org","sub":%q,"aud":"orders","scope":"read","client_id":%q,"jti":"j1","iat":%d,"exp":%d}`,
		id, id, t0.Unix(), exp.Unix())
}

func TestAccessToken(t *testing.T) {
	tok, err := jwtsvid.SignAccessToken(jwtsvid.Key{ID: "ec256", Signer: key("ec256")}, accessClaims(t0.Add(5*time.Minute)))
	if err != nil {
		t.Fatal(err)
	}
	c, err := jwtsvid.ValidateAccessToken(tok, bundles(), []string{"orders"}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if c.ID != id || c.Raw["scope"] != "read" || c.Raw["jti"] != "j1" || !c.Expiry.Equal(t0.Add(5*time.Minute)) {
		t.Fatalf("claims %+v", c)
	}
	if _, err := jwtsvid.ValidateAccessToken(tok, bundles(), nil, t0); err != nil {
		t.Fatalf("any audience: %v", err)
	}

	for _, tt := range []struct {
		name string
		tok  string
		aud  []string
		now  time.Time
		want error
	}{
		{"as a JWT-SVID", tok, nil, t0, jwtsvid.ErrHeader},
		{"another audience", tok, []string{"billing"}, t0, jwtsvid.ErrAudience},
		{"expired", tok, []string{"orders"}, t0.Add(5*time.Minute + jwtsvid.Leeway), jwtsvid.ErrExpired},
		{"a JWT-SVID", sign(t, "ec256", time.Minute, "orders"), []string{"orders"}, t0, jwtsvid.ErrHeader},
		{"no typ", craft(t, map[string]any{"alg": "ES256", "kid": "ec256"}, string(accessClaims(t0.Add(time.Minute))), es(key("ec256"))), []string{"orders"}, t0, jwtsvid.ErrHeader},
		{"typ JWT", craft(t, map[string]any{"alg": "ES256", "kid": "ec256", "typ": "JWT"}, string(accessClaims(t0.Add(time.Minute))), es(key("ec256"))), []string{"orders"}, t0, jwtsvid.ErrHeader},
		{"key not in the bundle", craft(t, map[string]any{"alg": "ES256", "kid": "ec256", "typ": "at+jwt"}, string(accessClaims(t0.Add(time.Minute))), es(key("attacker"))), []string{"orders"}, t0, jwtsvid.ErrSignature},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			if tt.name == "as a JWT-SVID" {
				_, err = jwtsvid.Validate(tt.tok, bundles(), []string{"orders"}, tt.now)
			} else {
				_, err = jwtsvid.ValidateAccessToken(tt.tok, bundles(), tt.aud, tt.now)
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("error %v, want %v", err, tt.want)
			}
		})
	}
	// The media type form of typ is accepted, in any case.
	alt := craft(t, map[string]any{"alg": "ES256", "kid": "ec256", "typ": "Application/AT+JWT"}, string(accessClaims(t0.Add(time.Minute))), es(key("ec256")))
	if _, err := jwtsvid.ValidateAccessToken(alt, bundles(), []string{"orders"}, t0); err != nil {
		t.Fatalf("typ application/at+jwt: %v", err)
	}
	if _, err := jwtsvid.SignAccessToken(jwtsvid.Key{ID: "ec256", Signer: key("ec256")}, []byte(`["not an object"]`)); !errors.Is(err, jwtsvid.ErrInvalid) {
		t.Fatalf("claims that are not an object: %v", err)
	}
}
