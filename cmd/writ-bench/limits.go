package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/x509ca"
)

// benchTD is the trust domain of every server, agent and stub the
// benchmark runs.
var benchTD = spiffeid.RequireTrustDomainFromString("bench.test")

// timedOp is an operation measured by throughput.
type timedOp struct {
	name string
	op   func() error
	ops  int
	busy time.Duration
}

// measureInterleaved runs each op for d in total, in rounds that
// alternate between them so that a change in the machine's speed (another
// process, frequency scaling) affects them alike, and returns ops/s of
// each.
func measureInterleaved(ctx context.Context, d time.Duration, rounds int, ops ...*timedOp) error {
	slice := d / time.Duration(rounds)
	for _, o := range ops { // warm up
		if err := o.op(); err != nil {
			return fmt.Errorf("%s: %w", o.name, err)
		}
	}
	for range rounds {
		for _, o := range ops {
			if err := ctx.Err(); err != nil {
				return err
			}
			start := time.Now()
			end := start.Add(slice)
			n := 0
			for {
				if err := o.op(); err != nil {
					return fmt.Errorf("%s: %w", o.name, err)
				}
				n++
				if n%8 == 0 && !time.Now().Before(end) {
					break
				}
			}
			o.ops += n
			o.busy += time.Since(start)
		}
	}
	return nil
}

func (o *timedOp) rate() float64 { return float64(o.ops) / o.busy.Seconds() }

// measureLimits measures the machine's raw signing limits and Writ's
// X.509-SVID signing in process.
func (b *bench) measureLimits(ctx context.Context) error {
	b.prog.phase("limits: ECDSA P-256, x509.CreateCertificate, x509ca.SignX509SVID")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	digest := sha256.Sum256([]byte("writ-bench"))
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		return err
	}
	sign := &timedOp{name: "sign", op: func() error {
		_, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
		return err
	}}
	verify := &timedOp{name: "verify", op: func() error {
		if !ecdsa.VerifyASN1(&key.PublicKey, digest[:], sig) {
			return errors.New("signature does not verify")
		}
		return nil
	}}
	if err := measureInterleaved(ctx, b.cfg.LimitDur, 4, sign, verify); err != nil {
		return err
	}
	b.set(figSign, sign.rate(), sign.ops, nil)
	b.set(figVerify, verify.rate(), verify.ops, nil)
	b.prog.printf("ECDSA P-256: %s signatures/s, %s verifications/s", num(sign.rate()), num(verify.rate()))

	now := time.Now()
	iss, err := newIssuer(now)
	if err != nil {
		return err
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	id := spiffeid.RequireFromPath(benchTD, "/ns/prod/sa/web")
	params := x509ca.SVIDParams{ID: id, DNSNames: []string{"web.bench.test"}, TTL: time.Hour, PublicKey: leafKey.Public()}
	// The template x509ca builds for params, filled in once: what
	// CreateCertificate costs without Writ's checks.
	tmpl := &x509.Certificate{
		SerialNumber:          new(big.Int).Lsh(big.NewInt(1), 127),
		Subject:               pkix.Name{Organization: []string{x509ca.Organization}, CommonName: "web.bench.test"},
		NotBefore:             now.Add(-x509ca.Backdate),
		NotAfter:              now.Add(time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:                  []*url.URL{id.URL()},
		DNSNames:              []string{"web.bench.test"},
		SubjectKeyId:          make([]byte, 20),
		AuthorityKeyId:        iss.Cert.SubjectKeyId,
	}
	create := &timedOp{name: "x509.CreateCertificate", op: func() error {
		_, err := x509.CreateCertificate(rand.Reader, tmpl, iss.Cert, leafKey.Public(), iss.Signer)
		return err
	}}
	signSVID := &timedOp{name: "x509ca.SignX509SVID", op: func() error {
		_, err := x509ca.SignX509SVID(now, iss, params)
		return err
	}}
	if err := measureInterleaved(ctx, b.cfg.LimitDur, 4, create, signSVID); err != nil {
		return err
	}
	b.set(figCreateCert, create.rate(), create.ops, nil)
	b.set(figSignSVID, signSVID.rate(), signSVID.ops, nil)
	b.set(figSignSVIDRatio, signSVID.rate()/create.rate(), 0, nil)
	b.prog.printf("x509.CreateCertificate %s/s; x509ca.SignX509SVID %s/s (%.2f of raw)", num(create.rate()), num(signSVID.rate()), signSVID.rate()/create.rate())
	return nil
}

// newIssuer returns a P-256 CA for benchTD, valid around now.
func newIssuer(now time.Time) (*x509ca.Issuer, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	cert, err := x509ca.NewSelfSignedCA(now, benchTD, caKey, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	return &x509ca.Issuer{Cert: cert, Signer: caKey}, nil
}
