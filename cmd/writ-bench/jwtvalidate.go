package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/jwtsvid"
)

// JWT-SVID validation figures (issue 16): jwtsvid.Verifier, which the
// agent's ValidateJWTSVID and workloadapi/authz use, on tokens it has
// never seen, against a raw ES256 verification of the same tokens.
const (
	figJWTFirst      = "jwt.validate.first_seen.per_core"
	figJWTVerify     = "jwt.validate.es256_verify.per_core"
	figJWTFirstRatio = "jwt.validate.first_seen.ratio_to_verify"

	// jwtRound is the number of tokens in a round; the ratio is taken
	// per round, and the median over rounds reported.
	jwtRound = 64
	// jwtMinRounds is the fewest rounds a full run measures, however
	// long they take on a busy machine, so that the median is one of
	// many; a smoke run measures jwtSmokeRounds.
	jwtMinRounds   = 101
	jwtSmokeRounds = 5
)

func jwtValidateFigures(add func(name, unit, desc string, ref *Reference, tgt *Target)) {
	tok := "JWT-SVIDs (ES256, P-256 key, sub, one aud, exp, iat) that the Verifier has never seen, each signed afresh, through jwtsvid.Verifier.Validate (the agent's ValidateJWTSVID and workloadapi/authz), the Verifier full (default size)"
	add(figJWTFirst, unitOpsPerSec, "validations per CPU second of "+tok+", one goroutine: per core", nil, nil)
	add(figJWTVerify, unitOpsPerSec, "raw ES256 verifications per CPU second of the same tokens (SHA-256 of the signing input and crypto/ecdsa.VerifyASN1, the signature decoded and in ASN.1 beforehand, nothing parsed), measured interleaved with the above token by token", nil, nil)
	add(figJWTFirstRatio, unitRatio, fmt.Sprintf("jwt.validate.first_seen.per_core / jwt.validate.es256_verify.per_core: the median over rounds of %d tokens of the ratio of the process CPU time of the two (garbage collection included, other processes' load excluded)", jwtRound), nil,
		atLeast(0.9, ">= 90 % of a raw ES256 verification"))
}

// measureJWTValidation measures jwtsvid.Verifier on first-seen tokens
// against a raw ES256 verification of each same token, alternating
// which goes first, timed by the process's CPU clock so that other load
// on the machine does not weigh on one side more than on the other.
func (b *bench) measureJWTValidation(ctx context.Context) error {
	b.prog.phase("JWT-SVID validation: a first-seen token through jwtsvid.Verifier against a raw ES256 verification")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	bundle := jwtbundle.New(benchTD)
	if err := bundle.AddJWTAuthority("k1", key.Public()); err != nil {
		return err
	}
	signer, err := jwtsvid.NewSigner(jwtsvid.Key{ID: "k1", Signer: key})
	if err != nil {
		return err
	}
	id := spiffeid.RequireFromPath(benchTD, "/ns/prod/sa/web")
	aud := []string{"spiffe://bench.test/ns/prod/sa/db"}
	now := time.Now()
	newToken := func() (tok string, input, sig []byte, err error) {
		// ECDSA signatures are randomized: every token is new.
		tok, _, err = signer.Sign(now, id, aud, 5*time.Minute, now.Add(time.Hour))
		if err != nil {
			return "", nil, nil, err
		}
		dot := strings.LastIndexByte(tok, '.')
		raw, err := base64.RawURLEncoding.DecodeString(tok[dot+1:])
		if err != nil || len(raw) != 64 {
			return "", nil, nil, fmt.Errorf("token signature: %d bytes, %v", len(raw), err)
		}
		sig, err = asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(raw[:32]), new(big.Int).SetBytes(raw[32:])})
		return tok, []byte(tok[:dot]), sig, err
	}
	v := jwtsvid.NewVerifier(jwtsvid.DefaultVerifierSize)
	for range jwtsvid.DefaultVerifierSize { // full, as in a busy validator
		tok, _, _, err := newToken()
		if err != nil {
			return err
		}
		if _, err := v.Validate(tok, bundle, aud, now); err != nil {
			return fmt.Errorf("validate: %w", err)
		}
	}

	type round struct{ raw, verifier time.Duration }
	var rounds []round
	minRounds := jwtMinRounds
	if b.cfg.Smoke {
		minRounds = jwtSmokeRounds
	}
	end := time.Now().Add(b.cfg.LimitDur)
	for len(rounds) < minRounds || time.Now().Before(end) {
		if err := ctx.Err(); err != nil {
			return err
		}
		var r round
		for i := range jwtRound {
			tok, input, sig, err := newToken()
			if err != nil {
				return err
			}
			verify := func() error {
				h := sha256.Sum256(input)
				if !ecdsa.VerifyASN1(&key.PublicKey, h[:], sig) {
					return errors.New("raw ES256 verification failed")
				}
				return nil
			}
			validate := func() error {
				_, err := v.Validate(tok, bundle, aud, now)
				return err
			}
			first, second, d1, d2 := verify, validate, &r.raw, &r.verifier
			if i%2 == 1 {
				first, second, d1, d2 = validate, verify, &r.verifier, &r.raw
			}
			for _, op := range []struct {
				f func() error
				d *time.Duration
			}{{first, d1}, {second, d2}} {
				start := processCPU()
				err := op.f()
				*op.d += processCPU() - start
				if err != nil {
					return err
				}
			}
		}
		rounds = append(rounds, r)
	}
	ratio := func(r round) float64 { return float64(r.raw) / float64(r.verifier) }
	slices.SortFunc(rounds, func(a, c round) int {
		switch ra, rc := ratio(a), ratio(c); {
		case ra < rc:
			return -1
		case ra > rc:
			return 1
		}
		return 0
	})
	med := rounds[len(rounds)/2]
	lo, hi := ratio(rounds[0]), ratio(rounds[len(rounds)-1])
	params := map[string]int{"round_count": len(rounds), "round_tokens": jwtRound, "round_min_permille": int(1000 * lo), "round_max_permille": int(1000 * hi)}
	n := len(rounds) * jwtRound
	b.set(figJWTFirst, float64(jwtRound)/med.verifier.Seconds(), n, params)
	b.set(figJWTVerify, float64(jwtRound)/med.raw.Seconds(), n, params)
	b.set(figJWTFirstRatio, ratio(med), len(rounds), params)
	b.prog.printf("first-seen JWT-SVIDs: %s/s per core through jwtsvid.Verifier, %s/s raw ES256 verify: %.1f %% (median of %d rounds of %d tokens; lowest round %.1f %%, highest %.1f %%; goal >= 90 %%)",
		num(float64(jwtRound)/med.verifier.Seconds()), num(float64(jwtRound)/med.raw.Seconds()), 100*ratio(med), len(rounds), jwtRound, 100*lo, 100*hi)
	return nil
}

// renderJWTValidation writes the report's section on the JWT-SVID
// validation figures.
func renderJWTValidation(w *mdWriter, r *Results) {
	w.p("## JWT-SVID validation")
	w.p("")
	note := ""
	if f := r.find(figJWTFirstRatio); f != nil && f.Params["round_count"] > 0 {
		note = fmt.Sprintf(" Over %d rounds of %d tokens the ratio ranged from %.2f to %.2f.", f.Params["round_count"], f.Params["round_tokens"], float64(f.Params["round_min_permille"])/1000, float64(f.Params["round_max_permille"])/1000)
	}
	w.p("A token seen for the first time, validated in process by jwtsvid.Verifier, against a raw ES256 verification of the same token, timed by CPU time token by token.%s", note)
	w.p("")
	var rows [][]string
	for _, n := range []string{figJWTFirst, figJWTVerify, figJWTFirstRatio} {
		f := r.find(n)
		if f == nil {
			continue
		}
		rows = append(rows, []string{n, cell(r, n), metCell(f), f.Description})
	}
	w.table([]string{"Figure", "Value", "Target", "What"}, rows)
}
