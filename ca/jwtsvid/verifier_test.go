package jwtsvid_test

import (
	"cmp"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"math/big"
	"slices"
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

	// Full, with one token expired: one more drops it and enough others
	// to leave an eighth of the places free, so that the next insertions
	// need no scan of the whole cache.
	v = jwtsvid.NewVerifier(16)
	for i := range 16 {
		ttl := time.Hour
		if i == 0 {
			ttl = time.Second
		}
		if _, err := v.Validate(sign(t, "ec256", ttl, aud...), src, aud, t0); err != nil {
			t.Fatal(err)
		}
	}
	soon := t0.Add(time.Minute)
	tok, _, err := jwtsvid.Sign(soon, jwtsvid.Key{ID: "ec256", Signer: key("ec256")}, id, aud, time.Hour, soon.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Validate(tok, src, aud, soon); err != nil {
		t.Fatal(err)
	}
	if n := jwtsvid.VerifierLen(v); n != 16-2+1 {
		t.Fatalf("a full verifier of 16 keeps %d tokens after one more; want 15 (an eighth free, the new one kept)", n)
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

// BenchmarkVerifierFirstSeenVsES256 compares Verifier.Validate of a
// token it has never seen with a raw ES256 verification of the same
// token: SHA-256 of its signing input and crypto/ecdsa.VerifyASN1 with
// the same P-256 key, the signature decoded from the token and converted
// to ASN.1 beforehand (untimed), so that the raw side parses nothing.
//
// Each iteration signs a fresh token (untimed; ECDSA signatures are
// randomized, so every token is new to the Verifier and all have the same
// size), then times the raw verification and Validate on it, alternating
// which goes first. The Verifier is long-lived and filled to
// DefaultVerifierSize before timing starts, so that what it costs to
// remember a token in a full cache is counted, as in a busy validator.
//
// Each call is timed by the process's CPU clock (all threads, so the
// garbage collector's work counts too; other processes' load does not)
// and by the wall clock. Iterations are grouped in rounds of
// verifierRound; it reports, over rounds, the median of the Verifier's
// rate as a percentage of the raw rate by CPU time (cpu-%-of-raw) with
// the lowest and highest round (cpu-%-min, cpu-%-max), the same median by
// wall time (wall-%-of-raw), and the median round's CPU ns per call of
// each side.
func BenchmarkVerifierFirstSeenVsES256(b *testing.B) {
	pub := key("ec256").Public().(*ecdsa.PublicKey)
	src := bundles()
	v := jwtsvid.NewVerifier(jwtsvid.DefaultVerifierSize)
	for range jwtsvid.DefaultVerifierSize {
		if _, err := v.Validate(sign(b, "ec256", 5*time.Minute, aud...), src, aud, t0); err != nil {
			b.Fatal(err)
		}
	}
	var rounds []firstSeenRound
	var cur firstSeenRound
	n := 0
	b.ReportAllocs()
	for b.Loop() {
		tok := sign(b, "ec256", 5*time.Minute, aud...)
		input, sig := signingInputASN1(b, tok)
		raw := func() {
			h := sha256.Sum256(input)
			if !ecdsa.VerifyASN1(pub, h[:], sig) {
				b.Fatal("raw verification failed")
			}
		}
		validate := func() {
			if _, err := v.Validate(tok, src, aud, t0); err != nil {
				b.Fatal(err)
			}
		}
		if n%2 == 0 {
			cur.raw.add(raw)
			cur.verifier.add(validate)
		} else {
			cur.verifier.add(validate)
			cur.raw.add(raw)
		}
		n++
		if cur.n++; cur.n == verifierRound {
			rounds = append(rounds, cur)
			cur = firstSeenRound{}
		}
	}
	if len(rounds) == 0 {
		rounds = append(rounds, cur) // -benchtime too short for a round
	}
	if n := jwtsvid.VerifierLen(v); n > jwtsvid.DefaultVerifierSize {
		b.Fatalf("the verifier keeps %d tokens, limit %d", n, jwtsvid.DefaultVerifierSize)
	}
	wall := make([]float64, len(rounds))
	for i, r := range rounds {
		wall[i] = float64(r.raw.wall) / float64(r.verifier.wall)
	}
	slices.Sort(wall)
	slices.SortFunc(rounds, func(a, c firstSeenRound) int { return cmp.Compare(a.ratio(), c.ratio()) })
	med := rounds[len(rounds)/2]
	b.ReportMetric(100*med.ratio(), "cpu-%-of-raw")
	b.ReportMetric(100*rounds[0].ratio(), "cpu-%-min")
	b.ReportMetric(100*rounds[len(rounds)-1].ratio(), "cpu-%-max")
	b.ReportMetric(100*wall[len(wall)/2], "wall-%-of-raw")
	b.ReportMetric(float64(len(rounds)), "rounds")
	b.ReportMetric(float64(med.raw.cpu.Nanoseconds())/float64(med.n), "raw-cpu-ns/op")
	b.ReportMetric(float64(med.verifier.cpu.Nanoseconds())/float64(med.n), "verifier-cpu-ns/op")
}

// verifierRound is the number of tokens in a round of
// BenchmarkVerifierFirstSeenVsES256.
const verifierRound = 64

// firstSeenRound sums the times of a round.
type firstSeenRound struct {
	n             int
	raw, verifier times
}

// ratio is the Verifier's rate over the raw rate in the round, by CPU
// time.
func (r firstSeenRound) ratio() float64 { return float64(r.raw.cpu) / float64(r.verifier.cpu) }

// times sums the CPU and wall times of calls.
type times struct{ cpu, wall time.Duration }

func (t *times) add(f func()) {
	c, w := processCPU(), time.Now()
	f()
	t.wall += time.Since(w)
	t.cpu += processCPU() - c
}

// signingInputASN1 returns tok's signing input and its ES256 signature in
// ASN.1 form.
func signingInputASN1(b *testing.B, tok string) ([]byte, []byte) {
	dot := strings.LastIndexByte(tok, '.')
	rawSig, err := base64.RawURLEncoding.DecodeString(tok[dot+1:])
	if err != nil || len(rawSig) != 64 {
		b.Fatalf("signature: %v (%d bytes)", err, len(rawSig))
	}
	sig, err := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(rawSig[:32]), new(big.Int).SetBytes(rawSig[32:])})
	if err != nil {
		b.Fatal(err)
	}
	return []byte(tok[:dot]), sig
}
