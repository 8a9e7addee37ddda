package sdsv3_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/metrics"
	"writ.dev/writ/workloadapi"
	"writ.dev/writ/workloadapi/sdsv3"
	"writ.dev/writ/workloadapi/unixattest"
)

var (
	td      = spiffeid.RequireTrustDomainFromString("example.org")
	agentID = spiffeid.RequireFromPath(td, "/writ/agent/node1")
)

// env is a Workload API server with SDS registered, on a real socket in
// a short temporary directory, with a real svidcache.Cache and real
// attestation by peer credentials.
type env struct {
	t *testing.T
	// reg holds the Workload API's metrics.
	reg   *prometheus.Registry
	iss   *x509ca.Issuer
	cache *svidcache.Cache
	addr  string
}

func newEnv(t *testing.T, cfg sdsv3.Config) *env {
	t.Helper()
	now := time.Now()
	e := &env{t: t}
	key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509ca.NewSelfSignedCA(now.Add(-time.Minute), td, key, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	e.iss = &x509ca.Issuer{Cert: cert, Signer: key}
	log := slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.cache, err = svidcache.New(svidcache.Config{TrustDomain: td, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	e.cache.Apply(svidcache.Update{Full: true, Bundle: spiffebundle.FromX509Authorities(td, []*x509.Certificate{cert})})

	dir, err := os.MkdirTemp("", "sds")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "s")
	e.addr = "unix://" + path
	e.reg = prometheus.NewRegistry()
	srv, err := workloadapi.New(workloadapi.Config{
		SocketPath:  path,
		Cache:       e.cache,
		Attestor:    unixattest.New(unixattest.Config{Logger: log}),
		TrustDomain: td,
		Logger:      log,
		Metrics:     metrics.NewAgent(e.reg),
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Socket, cfg.Cache, cfg.Logger = srv, e.cache, log
	h, err := sdsv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.Register(srv.HeaderExempt())

	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	cacheDone := make(chan struct{})
	go func() { defer close(cacheDone); e.cache.Run(ctx) }()
	go func() { runErr <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-runErr:
		cancel()
		t.Fatalf("Run: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-runErr:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("Run did not return")
		}
		<-cacheDone
	})
	return e
}

// add registers an entry for path matching selector (default: this
// process's uid) and signs its SVID.
func (e *env) add(path string, selector ...string) *entry.Entry {
	e.t.Helper()
	if len(selector) == 0 {
		selector = []string{fmt.Sprintf("unix:uid:%d", os.Geteuid())}
	}
	en := &entry.Entry{ID: entry.NewID(), SPIFFEID: spiffeid.RequireFromPath(td, path), ParentID: agentID}
	for _, s := range selector {
		sel, err := entry.ParseSelector(s)
		if err != nil {
			e.t.Fatal(err)
		}
		en.Selectors = append(en.Selectors, sel)
	}
	en.Normalize()
	if err := en.Validate(td); err != nil {
		e.t.Fatal(err)
	}
	e.cache.Apply(svidcache.Update{Entries: []*entry.Entry{en}})
	e.sign(en)
	return en
}

// sign stores a new SVID for en: a rotation.
func (e *env) sign(en *entry.Entry) *svidcache.X509SVID {
	e.t.Helper()
	key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		e.t.Fatal(err)
	}
	der, err := x509ca.SignX509SVID(time.Now(), e.iss, x509ca.SVIDParams{ID: en.SPIFFEID, TTL: time.Hour, PublicKey: key.Public()})
	if err != nil {
		e.t.Fatal(err)
	}
	s, err := svidcache.NewX509SVID(en.ID, [][]byte{der}, key)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.cache.SetX509SVID(s); err != nil {
		e.t.Fatal(err)
	}
	return s
}

// client is an SDS client of the server, as Envoy is: no security
// header, generated go-control-plane stubs.
func (e *env) client() secretv3.SecretDiscoveryServiceClient {
	e.t.Helper()
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	return secretv3.NewSecretDiscoveryServiceClient(conn)
}

// envoyNode describes an Envoy of the given minor version (1.x).
func envoyNode(minor uint32) *corev3.Node {
	return &corev3.Node{
		Id:            "test-envoy",
		UserAgentName: "envoy",
		UserAgentVersionType: &corev3.Node_UserAgentBuildVersion{UserAgentBuildVersion: &corev3.BuildVersion{
			Version: &typev3.SemanticVersion{MajorNumber: 1, MinorNumber: minor},
		}},
	}
}

// stream is one StreamSecrets call with its responses.
type stream struct {
	t    *testing.T
	s    grpc.BidiStreamingClient[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]
	msgs chan result
}

type result struct {
	resp *discoveryv3.DiscoveryResponse
	err  error
}

func (e *env) stream(ctx context.Context) *stream {
	e.t.Helper()
	return e.streamOn(ctx, e.client())
}

// streamOn opens a StreamSecrets call with client.
func (e *env) streamOn(ctx context.Context, client secretv3.SecretDiscoveryServiceClient) *stream {
	e.t.Helper()
	s, err := client.StreamSecrets(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	st := &stream{t: e.t, s: s, msgs: make(chan result, 16)}
	go func() {
		for {
			r, err := s.Recv()
			st.msgs <- result{r, err}
			if err != nil {
				return
			}
		}
	}()
	return st
}

func (s *stream) send(req *discoveryv3.DiscoveryRequest) {
	s.t.Helper()
	req.TypeUrl = sdsv3.SecretTypeURL
	if err := s.s.Send(req); err != nil {
		s.t.Fatal(err)
	}
}

// ack acknowledges resp for names.
func (s *stream) ack(resp *discoveryv3.DiscoveryResponse, names ...string) {
	s.send(&discoveryv3.DiscoveryRequest{VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce, ResourceNames: names})
}

// next returns the next response, failing on an error or after 10 s.
func (s *stream) next() *discoveryv3.DiscoveryResponse {
	s.t.Helper()
	r := s.nextResult()
	if r.err != nil {
		s.t.Fatalf("StreamSecrets: %v", r.err)
	}
	return r.resp
}

func (s *stream) nextResult() result {
	s.t.Helper()
	select {
	case r := <-s.msgs:
		return r
	case <-time.After(10 * time.Second):
		s.t.Fatal("no response within 10s")
	}
	panic("unreachable")
}

// secrets decodes a response's secrets by name.
func secrets(t *testing.T, resp *discoveryv3.DiscoveryResponse) map[string]*tlsv3.Secret {
	t.Helper()
	out := make(map[string]*tlsv3.Secret)
	for _, a := range resp.GetResources() {
		s := new(tlsv3.Secret)
		if err := a.UnmarshalTo(s); err != nil {
			t.Fatal(err)
		}
		if _, dup := out[s.Name]; dup {
			t.Fatalf("secret %q twice in one response", s.Name)
		}
		out[s.Name] = s
	}
	return out
}

// leafOf returns the leaf certificate of a TlsCertificate secret.
func leafOf(t *testing.T, s *tlsv3.Secret) *x509.Certificate {
	t.Helper()
	tc := s.GetTlsCertificate()
	if tc == nil {
		t.Fatalf("secret %q is not a TLS certificate", s.GetName())
	}
	certs := parsePEMCerts(t, tc.GetCertificateChain().GetInlineBytes())
	return certs[0]
}

// spiffeValidator returns the SPIFFE validator configuration of a
// validation context secret.
func spiffeValidator(t *testing.T, s *tlsv3.Secret) *tlsv3.SPIFFECertValidatorConfig {
	t.Helper()
	vc := s.GetValidationContext().GetCustomValidatorConfig()
	if vc.GetName() != "envoy.tls.cert_validator.spiffe" {
		t.Fatalf("secret %q: custom validator %q, want the SPIFFE validator", s.GetName(), vc.GetName())
	}
	cfg := new(tlsv3.SPIFFECertValidatorConfig)
	if err := vc.GetTypedConfig().UnmarshalTo(cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}
