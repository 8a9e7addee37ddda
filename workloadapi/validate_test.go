package workloadapi_test

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"writ.dev/writ/ca/jwtsvid"
	"writ.dev/writ/ca/x509ca"
)

// TestValidateJWTSVID: ValidateJWTSVID accepts only tokens signed by a JWT
// authority of the subject's trust domain, for the audience, unexpired,
// and says why it refuses the others.
func TestValidateJWTSVID(t *testing.T) {
	e := newEnv(t)
	e.add("/caller")
	c, _ := e.raw()
	ctx := withHeader(ctxTimeout(t, 30*time.Second))
	now := time.Now()
	sub := spiffeid.RequireFromPath(td, "/svc")
	valid := e.ca.jwt(t, now, sub, []string{"db", "cache"}, 5*time.Minute)

	b64 := base64.RawURLEncoding
	parts := strings.Split(valid, ".")
	header := func(h map[string]any) string {
		j, _ := json.Marshal(h)
		return b64.EncodeToString(j)
	}
	payload := func(p map[string]any) string {
		j, _ := json.Marshal(p)
		return b64.EncodeToString(j)
	}
	claims := map[string]any{"sub": sub.String(), "aud": "db", "exp": now.Add(5 * time.Minute).Unix(), "iat": now.Unix()}

	// HS256 keyed with the public key: the classic confusion attack.
	pubDER, err := x509.MarshalPKIXPublicKey(e.ca.jwtKey.Signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	hs, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: pubDER}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", jwtKeyID))
	if err != nil {
		t.Fatal(err)
	}
	cj, _ := json.Marshal(claims)
	hsJWS, err := hs.Sign(cj)
	if err != nil {
		t.Fatal(err)
	}
	hsToken, err := hsJWS.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}

	// A key the bundle does not hold, under another kid.
	otherKey, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	wrongKid, _, err := jwtsvid.Sign(now, jwtsvid.Key{ID: "k9", Signer: otherKey}, sub, []string{"db"}, time.Minute, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	// The bundle's kid, but another key.
	forgedKid, _, err := jwtsvid.Sign(now, jwtsvid.Key{ID: jwtKeyID, Signer: otherKey}, sub, []string{"db"}, time.Minute, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}

	tampered := map[string]any{}
	for k, v := range claims {
		tampered[k] = v
	}
	tampered["sub"] = "spiffe://example.org/admin"

	for _, tc := range []struct {
		name     string
		token    string
		audience string
		want     error // from ca/jwtsvid, for the message
		id       string
	}{
		{"valid", valid, "db", nil, sub.String()},
		{"valid, other audience of the token", valid, "cache", nil, sub.String()},
		{"alg none", header(map[string]any{"alg": "none", "kid": jwtKeyID, "typ": "JWT"}) + "." + payload(claims) + ".", "db", jwtsvid.ErrAlgorithm, ""},
		{"alg none with a signature", header(map[string]any{"alg": "none", "kid": jwtKeyID}) + "." + payload(claims) + "." + parts[2], "db", jwtsvid.ErrAlgorithm, ""},
		{"HS256 with the public key", hsToken, "db", jwtsvid.ErrAlgorithm, ""},
		{"tampered payload", parts[0] + "." + payload(tampered) + "." + parts[2], "db", jwtsvid.ErrSignature, ""},
		{"unknown kid", wrongKid, "db", jwtsvid.ErrKeyNotFound, ""},
		{"known kid, other key", forgedKid, "db", jwtsvid.ErrSignature, ""},
		{"expired", e.ca.jwt(t, now.Add(-time.Hour), sub, []string{"db"}, 5*time.Minute), "db", jwtsvid.ErrExpired, ""},
		{"wrong audience", valid, "other", jwtsvid.ErrAudience, ""},
		{"other trust domain", e.ca.jwt(t, now, spiffeid.RequireFromPath(otherTD, "/svc"), []string{"db"}, time.Minute), "db", jwtsvid.ErrKeyNotFound, ""},
		{"not a JWT", "not-a-token", "db", jwtsvid.ErrMalformed, ""},
		{"too large", strings.Repeat("a", jwtsvid.MaxTokenSize+1), "db", jwtsvid.ErrTooLarge, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := c.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: tc.audience, Svid: tc.token})
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if resp.GetSpiffeId() != tc.id {
					t.Errorf("spiffe_id %q", resp.GetSpiffeId())
				}
				f := resp.GetClaims().GetFields()
				if f["sub"].GetStringValue() != tc.id || f["exp"].GetNumberValue() == 0 || f["aud"] == nil {
					t.Errorf("claims %v", f)
				}
				return
			}
			wantCode(t, err, codes.InvalidArgument)
			// The reason is the validator's.
			if msg := status.Convert(err).Message(); !strings.HasPrefix(msg, tc.want.Error()) {
				t.Errorf("message %q, want it to start with %q", msg, tc.want)
			}
		})
	}
	t.Run("missing fields", func(t *testing.T) {
		_, err := c.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Svid: valid})
		wantCode(t, err, codes.InvalidArgument)
		_, err = c.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "db"})
		wantCode(t, err, codes.InvalidArgument)
	})
}
