package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"writ.dev/writ/agent/nodeclient"
	adminv1 "writ.dev/writ/ca/api/admin/v1"
)

// The server's JWT-SVID signing ceiling: simulated agents, connected as
// Writ's agent connects (nodeclient, mutual TLS with their agent SVIDs),
// send BatchSignJWTSVID calls of jwtSignBatch requests for new audiences
// back to back to one real `writ server run`, each keeping one batch in
// flight as an agent's batcher does under load. There is no Workload API
// hop: this is what one server signs for a fleet, whereas
// writ.fetch_jwtsvid.first.c16 is what one agent delivers to its
// workloads.

const (
	// phaseJWTSign is the --only phase of these figures.
	phaseJWTSign = "jwt-sign"
	// jwtSignAgents and jwtSignBatch: the simulated agents and the
	// requests of each of their calls.
	jwtSignAgents = 8
	jwtSignBatch  = 64

	figJWTSignRate  = "server.jwt_sign.rate"
	figJWTSignBatch = "server.jwt_sign.batch.p50"
	figJWTSignCPU   = "server.jwt_sign.cpu_per_token"
)

// jwtSignFigures adds the figures of the phase to the catalogue.
func jwtSignFigures(add func(name, unit, desc string, ref *Reference, tgt *Target)) {
	what := fmt.Sprintf("JWT-SVIDs signed by one server for %d simulated agents over mutual TLS, each sending BatchSignJWTSVID calls of %d new audiences back to back (no Workload API hop)", jwtSignAgents, jwtSignBatch)
	add(figJWTSignRate, unitSVIDsPerSec, what+": JWT-SVIDs per second", nil, nil)
	add(figJWTSignBatch, unitMS, what+": median latency of a call", nil, nil)
	add(figJWTSignCPU, unitUS, "the same: CPU time (user and system) of the server process per token, warm-up included", nil, nil)
}

// measureServerJWTSigning measures the server's JWT-SVID signing ceiling.
func (b *bench) measureServerJWTSigning(ctx context.Context, bin string) error {
	b.prog.phase(fmt.Sprintf("server JWT-SVID signing: %d simulated agents, batches of %d new audiences", jwtSignAgents, jwtSignBatch))
	dir := filepath.Join(b.tmp, "J")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	dataDir := filepath.Join(dir, "s")
	server, addr, err := b.startServer(ctx, bin, "J-server", dataDir)
	if err != nil {
		return err
	}
	defer server.stop()
	conn, err := grpc.NewClient("unix:"+filepath.Join(dataDir, "admin.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	bundlePEM, err := b.runWrit(ctx, bin, "bundle", "show", "--admin-socket", filepath.Join(dataDir, "admin.sock"))
	if err != nil {
		return err
	}
	bundle, err := x509bundle.Parse(benchTD, []byte(bundlePEM))
	if err != nil {
		return err
	}
	auth := bundle.X509Authorities()

	clients := make([]*nodeclient.Client, jwtSignAgents)
	entryIDs := make([]string, jwtSignAgents)
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	}()
	tokens := adminv1.NewJoinTokenServiceClient(conn)
	entries := adminv1.NewEntryServiceClient(conn)
	for i := range jwtSignAgents {
		agent := fmt.Sprintf("spiffe://%s/writ/agent/jwt%d", benchTD.Name(), i)
		tok, err := tokens.GenerateJoinToken(ctx, &adminv1.GenerateJoinTokenRequest{SpiffeId: agent})
		if err != nil {
			return fmt.Errorf("join token: %w", err)
		}
		resp, err := entries.BatchCreateEntry(ctx, &adminv1.BatchCreateEntryRequest{Entries: []*adminv1.Entry{{
			SpiffeId: fmt.Sprintf("spiffe://%s/bench/jwt/w%d", benchTD.Name(), i), ParentId: agent,
			Selectors: []string{fmt.Sprintf("unix:uid:%d", bulkUIDBase+i)},
		}}})
		if err != nil {
			return fmt.Errorf("BatchCreateEntry: %w", err)
		}
		if r := resp.GetResults(); len(r) != 1 || r[0].GetStatus().GetCode() != 0 {
			return fmt.Errorf("BatchCreateEntry: %v", r)
		}
		entryIDs[i] = resp.GetResults()[0].GetEntry().GetId()
		cfg := nodeclient.Config{Address: addr, TrustDomain: benchTD, Authorities: func() []*x509.Certificate { return auth }}
		if clients[i], err = attestSimulated(ctx, cfg, tok.GetToken(), once); err != nil {
			return fmt.Errorf("simulated agent %d: %w", i, err)
		}
	}

	warmup, dur := b.cfg.Warmup, b.cfg.LoadDur
	t0, err := cpuTicks(server.pid())
	if err != nil {
		return err
	}
	var (
		signed atomic.Int64 // tokens signed in the window
		total  atomic.Int64 // tokens signed, warm-up included
		mu     sync.Mutex   // guards lat, first
		lat    []time.Duration
		first  error
		wg     sync.WaitGroup
	)
	start := time.Now()
	ws, we := start.Add(warmup), start.Add(warmup+dur)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for i, c := range clients {
		wg.Go(func() {
			var mine []time.Duration
			defer func() {
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			}()
			reqs := make([]nodeclient.JWTRequest, jwtSignBatch)
			for n := 0; ; n++ {
				t := time.Now()
				if !t.Before(we) || lctx.Err() != nil {
					return
				}
				for k := range reqs {
					reqs[k] = nodeclient.JWTRequest{EntryID: entryIDs[i], Audience: []string{fmt.Sprintf("sign-%d-%d-%d", i, n, k)}}
				}
				cctx, ccancel := context.WithTimeout(lctx, callTimeout)
				res, err := c.BatchSignJWT(cctx, reqs)
				ccancel()
				if err == nil && len(res) != len(reqs) {
					err = fmt.Errorf("%d results for %d requests", len(res), len(reqs))
				}
				for _, r := range res {
					if err == nil && r.Err != nil {
						err = r.Err
					}
				}
				if err != nil {
					if lctx.Err() == nil {
						mu.Lock()
						if first == nil {
							first = err
						}
						mu.Unlock()
						cancel()
					}
					return
				}
				end := time.Now()
				total.Add(int64(len(reqs)))
				if !t.Before(ws) && !end.After(we) {
					signed.Add(int64(len(reqs)))
					mine = append(mine, end.Sub(t))
				}
			}
		})
	}
	wg.Wait()
	if first != nil {
		return fmt.Errorf("BatchSignJWTSVID: %w", first)
	}
	t1, err := cpuTicks(server.pid())
	if err != nil {
		return err
	}
	sum, err := durationsMS(lat).Summarize()
	if err != nil {
		return fmt.Errorf("no call completed within %s", dur)
	}
	rate := float64(signed.Load()) / dur.Seconds()
	cpu := float64(t1-t0) * 1e6 / float64(clockTicksPerSec) / float64(total.Load())
	params := map[string]int{"agents": jwtSignAgents, "batch": jwtSignBatch}
	b.set(figJWTSignRate, rate, int(signed.Load()), params)
	b.set(figJWTSignBatch, sum.P50, sum.N, params)
	b.set(figJWTSignCPU, cpu, int(total.Load()), params)
	b.prog.printf("server JWT-SVID signing: %s tokens/s, a call of %d p50 %s ms, server CPU %.1f µs per token (%s)", num(rate), jwtSignBatch, msNum(sum.P50), cpu, loadNow())
	return nil
}

// attestSimulated attests a simulated agent with a join token, through
// retry, and returns its client of cfg, authenticated with the agent SVID
// it received.
func attestSimulated(ctx context.Context, cfg nodeclient.Config, token string, retry func(func() error) error) (*nodeclient.Client, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, err
	}
	ac, err := nodeclient.New(cfg)
	if err != nil {
		return nil, err
	}
	var res *nodeclient.AttestResult
	err = retry(func() error {
		var err error
		res, err = ac.Attest(ctx, token, csr)
		return err
	})
	ac.Close()
	if err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	var cert atomic.Pointer[tls.Certificate]
	cert.Store(&tls.Certificate{Certificate: res.Chain, PrivateKey: key})
	cfg.Certificate = &cert
	return nodeclient.New(cfg)
}

// once calls fn once: attestSimulated without retries.
func once(fn func() error) error { return fn() }
