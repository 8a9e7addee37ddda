package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"

	"writ.dev/writ/agent/revocation"
	"writ.dev/writ/workloadapi/authz"
)

// OAuth access-token figures (issue 15): local validation by the
// workloadapi/authz middleware against a raw ES256 verification.
const (
	figATCached    = "oauth.validate.cached.per_core"
	figATFull      = "oauth.validate.full.per_core"
	figATFullRatio = "oauth.validate.full.ratio_to_verify"

	// atRevocations is the size of the revocation list the validations
	// are checked against.
	atRevocations = 1000
)

func oauthFigures() []*Figure {
	tok := fmt.Sprintf("an RFC 9068 access token (ES256, certificate-bound, 2 scopes) through authz.AccessTokenAuthorizer.Authenticate with a %s-entry revocation list", count(atRevocations))
	return []*Figure{
		{Name: figATCached, Unit: unitOpsPerSec, Description: "validations per second of " + tok + ", the token remembered (the clients' common case), one goroutine: per core"},
		{Name: figATFull, Unit: unitOpsPerSec, Description: "validations per second of " + tok + ", the token cache disabled (every call a full parse and ES256 verification), one goroutine: per core"},
		{Name: figATFullRatio, Unit: unitRatio, Description: "oauth.validate.full.per_core / limit.ecdsa_p256_verify: the cost of the middleware over the bare signature check"},
	}
}

// measureOAuthValidation measures the middleware in process, interleaved
// with a raw ES256 verification of the same token's signing input.
func (b *bench) measureOAuthValidation(ctx context.Context) error {
	b.prog.phase("OAuth access tokens: local validation in workloadapi/authz")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	bundle := jwtbundle.New(benchTD)
	if err := bundle.AddJWTAuthority("k1", key.Public()); err != nil {
		return err
	}
	iss, err := newIssuer(time.Now())
	if err != nil {
		return err
	}
	peer := iss.Cert // any certificate: the token is bound to it
	now := time.Now()
	revs := revocation.New(nil)
	var rs []revocation.Revocation
	for i := range atRevocations {
		rs = append(rs, revocation.Revocation{JTI: fmt.Sprintf("revoked-%d", i), RevokedAt: now, ExpiresAt: now.Add(time.Hour)})
	}
	revs.Add(rs)
	token, signed, sig, err := benchAccessToken(key, peer, now)
	if err != nil {
		return err
	}
	newAuthz := func(cache int) (*authz.AccessTokenAuthorizer, error) {
		return authz.NewAccessTokenAuthorizer(authz.AccessTokenConfig{
			Bundles: bundle, Audience: []string{"https://orders.bench.test"}, Scopes: []string{"orders:read"},
			Revocations: revs, TokenCacheSize: cache,
		})
	}
	cached, err := newAuthz(0)
	if err != nil {
		return err
	}
	full, err := newAuthz(-1)
	if err != nil {
		return err
	}
	header := "Bearer " + token
	validate := func(a *authz.AccessTokenAuthorizer) func() error {
		return func() error {
			_, err := a.Authenticate(header, peer)
			return err
		}
	}
	digest := sha256.Sum256([]byte(signed))
	verify := &timedOp{name: "ES256 verify", op: func() error {
		if !ecdsa.VerifyASN1(&key.PublicKey, digest[:], sig) {
			return errors.New("signature does not verify")
		}
		return nil
	}}
	c := &timedOp{name: "cached validation", op: validate(cached)}
	f := &timedOp{name: "full validation", op: validate(full)}
	if err := measureInterleaved(ctx, b.cfg.LimitDur, 4, c, f, verify); err != nil {
		return err
	}
	b.set(figATCached, c.rate(), c.ops, nil)
	b.set(figATFull, f.rate(), f.ops, nil)
	b.set(figATFullRatio, f.rate()/verify.rate(), 0, nil)
	b.prog.printf("access tokens: %s/s remembered, %s/s in full, ES256 verify %s/s (one goroutine)", num(c.rate()), num(f.rate()), num(verify.rate()))
	return nil
}

// benchAccessToken signs an access token bound to peer, and returns it
// with its signing input and its signature in ASN.1 form (for the raw
// verification).
func benchAccessToken(key *ecdsa.PrivateKey, peer *x509.Certificate, now time.Time) (token, signed string, asn1Sig []byte, err error) {
	enc := func(v any) string {
		j, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(j)
	}
	thumb := sha256.Sum256(peer.Raw)
	signed = enc(map[string]any{"alg": "ES256", "kid": "k1", "typ": "at+jwt"}) + "." + enc(map[string]any{
		"iss": "https://auth.bench.test", "sub": "spiffe://bench.test/web", "client_id": "spiffe://bench.test/web",
		"aud": "https://orders.bench.test", "scope": "orders:read orders:write", "jti": "bench-token",
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		"cnf": map[string]any{"x5t#S256": base64.RawURLEncoding.EncodeToString(thumb[:])},
	})
	digest := sha256.Sum256([]byte(signed))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		return "", "", nil, err
	}
	raw := make([]byte, 64)
	r.FillBytes(raw[:32])
	s.FillBytes(raw[32:])
	asn1Sig, err = ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		return "", "", nil, err
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(raw), signed, asn1Sig, nil
}

// renderOAuth writes the report's section on the OAuth figures.
func renderOAuth(w *mdWriter, r *Results) {
	w.p("## OAuth access tokens")
	w.p("")
	w.p("Resource servers validate access tokens in process (workloadapi/authz); no validation reaches the authorization server.")
	w.p("")
	var rows [][]string
	for _, f := range r.Figures {
		if strings.HasPrefix(f.Name, "oauth.") {
			rows = append(rows, []string{f.Name, cell(r, f.Name), refCell(f), metCell(f), f.Description})
		}
	}
	w.table([]string{"Figure", "Value", "Reference", "Target", "What"}, rows)
}
