package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The JWKS of OIDC discovery (`writ server run --oidc-bind-address`), as
// gateways fetch it: a server serving it over plain HTTP
// (--oidc-insecure-http, as behind a TLS-terminating proxy or CDN) and
// one over HTTPS (--oidc-cert/--oidc-key), each loaded by jwksCallers
// concurrent keep-alive clients in this process asking for the full
// document, then with If-None-Match (a 304 each time). Bytes per response
// are counted on the client's connections (status line, headers, body;
// TLS records and HTTP/2 framing included over HTTPS). The fleet figures
// are derived from the measured Cache-Control max-age: a validator
// caches the JWKS and verifies every token locally, so Writ sees one
// fetch per gateway per max-age whatever the validation rate.
const (
	jwksCallers   = 16
	jwksIssuer    = "https://oidc.bench.test"
	jwksPath      = "/keys"
	jwksFleetSize = 10000

	figJWKSMaxAge         = "jwks.max_age"
	figJWKSFleetFetches   = "jwks.fleet_fetch_rate"
	figJWKSGatewayCeiling = "jwks.gateways_per_server"
)

// jwksModes are the endpoints measured; jwksKinds the requests.
var (
	jwksModes = []struct{ key, what string }{
		{"http", "plain HTTP/1.1 (--oidc-insecure-http)"},
		{"https", "HTTPS (--oidc-cert/--oidc-key; Go's client, HTTP/2)"},
	}
	jwksKinds = []struct{ key, what string }{
		{"full", "full JWKS (no If-None-Match)"},
		{"conditional", "conditional request (If-None-Match with the current ETag: 304 Not Modified)"},
	}
)

func jwksFigures(add func(name, unit, desc string, ref *Reference, tgt *Target)) {
	for _, m := range jwksModes {
		for _, k := range jwksKinds {
			base := "jwks." + m.key + "." + k.key
			what := fmt.Sprintf("JWKS of OIDC discovery over %s, %s, %d concurrent keep-alive clients", m.what, k.what, jwksCallers)
			add(base+".rate", "requests/s", what+": requests per second", nil, nil)
			add(base+".p99", unitMS, what+": 99th percentile latency", nil, nil)
			add(base+".bytes", "bytes", what+": bytes received per response on the client's connections (headers and body, framing included)", nil, nil)
		}
	}
	add(figJWKSMaxAge, "s", "Cache-Control max-age of the JWKS response (half the bundle's refresh hint): how long a gateway or CDN keeps it", nil, nil)
	add(figJWKSFleetFetches, "requests/s", fmt.Sprintf("JWKS fetches per second that %s gateways caching the JWKS for max-age send to Writ (fleet / max-age), whatever their validation rate: validating a JWT-SVID needs no call to Writ", count(jwksFleetSize)), nil, nil)
	add(figJWKSGatewayCeiling, "gateways", "gateways one server's OIDC endpoint keeps fresh, each fetching once per max-age with If-None-Match (jwks.http.conditional.rate x max-age; derived)", nil, nil)
}

// measureJWKS measures the JWKS endpoint over HTTP and HTTPS.
func (b *bench) measureJWKS(ctx context.Context, bin string) error {
	b.prog.phase(fmt.Sprintf("OIDC JWKS endpoint: full and conditional requests, %d clients, HTTP and HTTPS", jwksCallers))
	var maxAge int
	for _, m := range jwksModes {
		if err := b.measureJWKSMode(ctx, bin, m.key, &maxAge); err != nil {
			b.fail(err, "jwks."+m.key+".")
		}
	}
	if maxAge <= 0 {
		return errors.New("no Cache-Control max-age measured")
	}
	b.set(figJWKSMaxAge, float64(maxAge), 0, nil)
	b.set(figJWKSFleetFetches, float64(jwksFleetSize)/float64(maxAge), 0, map[string]int{"gateways": jwksFleetSize, "max_age": maxAge})
	if rate, ok := b.res.value("jwks.http.conditional.rate"); ok {
		b.set(figJWKSGatewayCeiling, rate*float64(maxAge), 0, map[string]int{"max_age": maxAge})
	} else {
		b.fail(errors.New("no conditional-request rate over HTTP"), figJWKSGatewayCeiling)
	}
	b.prog.printf("max-age %d s: %s gateways fetch %.1f JWKS/s from Writ, whatever their validation rate", maxAge, count(jwksFleetSize), float64(jwksFleetSize)/float64(maxAge))
	return nil
}

func (b *bench) measureJWKSMode(ctx context.Context, bin, mode string, maxAge *int) error {
	dir := filepath.Join(b.tmp, "jwks-"+mode)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	dataDir := filepath.Join(dir, "s")
	args := []string{"server", "run", "--trust-domain", benchTD.Name(), "--data-dir", dataDir,
		"--bind-address", "127.0.0.1:0", "--log-format", "json", "--log-level", "info",
		"--jwt-issuer", jwksIssuer, "--oidc-bind-address", "127.0.0.1:0"}
	client := &http.Client{Timeout: b.cfg.Timeout}
	tr := &http.Transport{MaxIdleConnsPerHost: jwksCallers, MaxConnsPerHost: jwksCallers, DisableCompression: true}
	var counter byteCounter
	dial := &net.Dialer{Timeout: 5 * time.Second}
	if mode == "http" {
		args = append(args, "--oidc-insecure-http")
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dial.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return counter.wrap(c), nil
		}
	} else {
		certFile, keyFile := filepath.Join(dir, "oidc.pem"), filepath.Join(dir, "oidc-key.pem")
		roots, err := writeLoopbackCert(certFile, keyFile)
		if err != nil {
			return err
		}
		args = append(args, "--oidc-cert", certFile, "--oidc-key", keyFile)
		tr.ForceAttemptHTTP2 = true
		tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dial.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return counter.wrap(c), nil
		}
	}
	client.Transport = tr
	defer tr.CloseIdleConnections()
	p, err := b.startWrit(bin, "jwks-"+mode+"-server", nil, args...)
	if err != nil {
		return err
	}
	defer p.stop()
	if err := b.waitHealthy(ctx, p, "server", "healthcheck", "--admin-socket", filepath.Join(dataDir, "admin.sock"), "--timeout", "1s"); err != nil {
		return err
	}
	var addr string
	err = waitFor(ctx, 10*time.Second, "the OIDC address in the server's log", func() (bool, error) {
		addr = readyField(filepath.Join(b.tmp, "logs", "jwks-"+mode+"-server.log"), "oidc_address")
		return addr != "", nil
	}, p)
	if err != nil {
		return err
	}
	scheme := "http"
	if mode == "https" {
		scheme = "https"
	}
	url := scheme + "://" + addr + jwksPath

	// One fetch first: the document, its ETag and max-age.
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	etag := resp.Header.Get("ETag")
	if resp.StatusCode != http.StatusOK || etag == "" {
		return fmt.Errorf("GET %s: %s, ETag %q", url, resp.Status, etag)
	}
	var jwks struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &jwks); err != nil || len(jwks.Keys) == 0 {
		return fmt.Errorf("GET %s: not a JWKS with keys (%v)", url, err)
	}
	age, err := parseMaxAge(resp.Header.Get("Cache-Control"))
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	*maxAge = age
	if mode == "https" && resp.ProtoMajor != 2 {
		b.prog.printf("note: the HTTPS JWKS was served over %s, not HTTP/2", resp.Proto)
	}

	for _, k := range jwksKinds {
		ifNoneMatch, want := "", http.StatusOK
		if k.key == "conditional" {
			ifNoneMatch, want = etag, http.StatusNotModified
		}
		if _, _, err := jwksLoad(ctx, client, url, ifNoneMatch, want, b.cfg.Warmup); err != nil {
			return err
		}
		counter.n.Store(0)
		lat, n, err := jwksLoad(ctx, client, url, ifNoneMatch, want, b.cfg.LoadDur/2)
		if err != nil {
			return err
		}
		bytes := counter.n.Load()
		s := durationsMS(lat)
		sum, err := s.Summarize()
		if err != nil {
			return err
		}
		base := "jwks." + mode + "." + k.key
		rate := float64(n) / (b.cfg.LoadDur / 2).Seconds()
		params := map[string]int{"clients": jwksCallers, "keys": len(jwks.Keys)}
		b.set(base+".rate", rate, sum.N, params)
		b.set(base+".p99", sum.P99, sum.N, params)
		b.set(base+".bytes", float64(bytes)/float64(n), n, params)
		b.dist[base] = s
		b.prog.printf("JWKS %s %s: %.0f requests/s, p99 %s ms, %.0f bytes per response (%s)", mode, k.key, rate, msNum(sum.P99), float64(bytes)/float64(n), loadNow())
	}
	return nil
}

// jwksLoad runs jwksCallers clients for d and returns the latency of each
// request and their number. A response other than want fails it.
func jwksLoad(ctx context.Context, client *http.Client, url, ifNoneMatch string, want int, d time.Duration) ([]time.Duration, int, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var (
		mu       sync.Mutex // guards lat and firstErr
		lat      []time.Duration
		firstErr error
		wg       sync.WaitGroup
	)
	for range jwksCallers {
		wg.Go(func() {
			var mine []time.Duration
			defer func() {
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			}()
			for ctx.Err() == nil {
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				if err != nil {
					mu.Lock()
					firstErr = cmpErr(firstErr, err)
					mu.Unlock()
					return
				}
				if ifNoneMatch != "" {
					req.Header.Set("If-None-Match", ifNoneMatch)
				}
				t0 := time.Now()
				resp, err := client.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				d := time.Since(t0)
				if ctx.Err() != nil {
					return // the window closed during the request
				}
				if err == nil && resp.StatusCode != want {
					err = fmt.Errorf("GET %s: %s, want %d", url, resp.Status, want)
				}
				if err != nil {
					mu.Lock()
					firstErr = cmpErr(firstErr, err)
					mu.Unlock()
					return
				}
				mine = append(mine, d)
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return nil, 0, firstErr
	}
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return nil, 0, err
	}
	return lat, len(lat), nil
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// byteCounter counts the bytes read from the connections it wraps.
type byteCounter struct{ n atomic.Int64 }

func (c *byteCounter) wrap(conn net.Conn) net.Conn { return &countingConn{Conn: conn, n: &c.n} }

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// parseMaxAge returns the max-age of a Cache-Control header.
func parseMaxAge(cc string) (int, error) {
	for d := range strings.SplitSeq(cc, ",") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(d), "max-age="); ok {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return 0, fmt.Errorf("Cache-Control %q: bad max-age", cc)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("Cache-Control %q has no max-age", cc)
}

// readyField returns a field of the "server ready" record in a JSON log
// file, or "".
func readyField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.Contains(line, []byte(`"server ready"`)) {
			continue
		}
		var rec map[string]any
		if json.Unmarshal(line, &rec) != nil || rec["msg"] != "server ready" {
			continue
		}
		if v, ok := rec[key].(string); ok {
			return v
		}
	}
	return ""
}

// writeLoopbackCert writes a self-signed certificate for 127.0.0.1 and
// its key, and returns a pool trusting it.
func writeLoopbackCert(certFile, keyFile string) (*x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "writ-bench oidc"},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool, nil
}

// loadNow is the 1-minute load average, for the progress lines.
func loadNow() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "load unknown"
	}
	return "load " + strings.Fields(string(b))[0]
}

// renderJWKS writes the JWKS section of the report.
func renderJWKS(w *mdWriter, r *Results) {
	w.p("## OIDC discovery: the JWKS for gateways")
	w.p("")
	w.p("`writ server run --oidc-bind-address` serving its JWKS to %d concurrent keep-alive clients in the benchmark process, asking for the full document or with If-None-Match (304). Bytes are counted on the clients' connections.", jwksCallers)
	w.p("")
	var rows [][]string
	for _, m := range jwksModes {
		for _, k := range jwksKinds {
			base := "jwks." + m.key + "." + k.key
			rows = append(rows, []string{m.key, k.key, cell(r, base+".rate"), cell(r, base+".p99"), cell(r, base+".bytes")})
		}
	}
	w.table([]string{"Endpoint", "Request", "Requests/s", "p99", "Bytes per response"}, rows)
	w.p("Validation needs no call to Writ: a gateway caches the JWKS for its max-age (%s) and verifies each JWT-SVID's signature itself, so a fleet fetches fleet / max-age times per second whatever its validation rate: %s gateways, %s; one server's endpoint keeps %s fresh at its measured 304 rate.",
		cell(r, figJWKSMaxAge), count(jwksFleetSize), cell(r, figJWKSFleetFetches), cell(r, figJWKSGatewayCeiling))
	w.p("")
}
