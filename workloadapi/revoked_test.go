package workloadapi_test

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"writ.dev/writ/agent/revocation"
	"writ.dev/writ/workloadapi"
)

// TestValidateJWTSVIDRevoked: a token whose jti is revoked, or whose sub
// or client_id names a client revoked at or after its iat, is refused
// like any invalid token, without saying which revocation applies.
func TestValidateJWTSVIDRevoked(t *testing.T) {
	revs := revocation.New(nil)
	e := newEnv(t, withConfig(func(c *workloadapi.Config) { c.Revocations = revs }))
	e.add("/caller")
	c, _ := e.raw()
	ctx := withHeader(ctxTimeout(t, 30*time.Second))
	now := time.Now().Truncate(time.Second)
	svc := spiffeid.RequireFromPath(td, "/svc")
	fired := spiffeid.RequireFromPath(td, "/fired")
	revs.Add([]revocation.Revocation{
		{JTI: "revoked-jti", RevokedAt: now, ExpiresAt: now.Add(time.Hour)},
		{ClientID: fired.String(), RevokedAt: now, ExpiresAt: now.Add(time.Hour)},
	})
	sign := func(claims map[string]any) string {
		enc := func(v any) string {
			b, _ := json.Marshal(v)
			return base64.RawURLEncoding.EncodeToString(b)
		}
		signed := enc(map[string]any{"alg": "ES256", "kid": jwtKeyID, "typ": "JWT"}) + "." + enc(claims)
		sum := sha256.Sum256([]byte(signed))
		r, s, err := ecdsa.Sign(rand.Reader, e.ca.jwtKey.Signer.(*ecdsa.PrivateKey), sum[:])
		if err != nil {
			t.Fatal(err)
		}
		sig := make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
		return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
	}
	claims := func(sub string, iat time.Time, extra ...string) map[string]any {
		m := map[string]any{"sub": sub, "aud": "db", "exp": now.Add(5 * time.Minute).Unix(), "iat": iat.Unix()}
		for i := 0; i+1 < len(extra); i += 2 {
			m[extra[i]] = extra[i+1]
		}
		return m
	}
	for _, tc := range []struct {
		name    string
		token   string
		revoked bool
	}{
		{"not revoked", sign(claims(svc.String(), now, "jti", "other")), false},
		{"revoked jti", sign(claims(svc.String(), now, "jti", "revoked-jti")), true},
		{"revoked subject, issued at the revocation", sign(claims(fired.String(), now)), true},
		{"revoked subject, issued after", sign(claims(fired.String(), now.Add(time.Second))), false},
		{"revoked client_id, issued before", sign(claims(svc.String(), now.Add(-time.Minute), "client_id", fired.String())), true},
		{"revoked client_id, issued after", sign(claims(svc.String(), now.Add(time.Second), "client_id", fired.String())), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "db", Svid: tc.token})
			if !tc.revoked {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantCode(t, err, codes.InvalidArgument)
			if msg := status.Convert(err).Message(); msg != "token revoked" {
				t.Errorf("message %q", msg)
			}
		})
	}
}
