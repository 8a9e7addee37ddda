package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"writ.dev/writ/ca/x509ca"
)

// The relay stub: the least work a first JWT-SVID takes on this machine. A
// Workload API that holds no signing key, as an agent holds none, must
// ask a server for the token of each new audience: two processes, two
// gRPC hops (the Workload API on a Unix socket, then the server over
// mutually authenticated TLS 1.3 on loopback) and one ES256 signature.
// The relay child serves the Workload API and forwards each FetchJWTSVID
// to the signer child, which signs a token for the audience asked.
// Neither attests, caches, batches or checks anything: what a real agent
// and server do beyond that is their own cost.

const (
	relayChild  = "relay"
	signerChild = "signer"
	// relayDirEnv is the directory of the relay's and signer's
	// certificates and keys; relayAddrEnv the signer's address, for the
	// relay.
	relayDirEnv  = "WRIT_BENCH_RELAY_DIR"
	relayAddrEnv = "WRIT_BENCH_SIGNER_ADDR"
	// relayTTL is the lifetime of the signer's tokens.
	relayTTL = 5 * time.Minute
)

// relaySubject is the SPIFFE ID of the relay's tokens.
var relaySubject = spiffeid.RequireFromPath(benchTD, "/stub/relayed")

// relayFiles are the certificate files of the relay directory.
var relayFiles = struct{ bundle, signerCert, signerKey, relayCert, relayKey string }{
	"bundle.pem", "signer.pem", "signer.key", "relay.pem", "relay.key",
}

// writeRelayCerts makes a CA and an X.509-SVID for each of the signer and
// the relay, as Writ's server and agent authenticate each other, in dir.
func writeRelayCerts(dir string, now time.Time) error {
	iss, err := newIssuer(now)
	if err != nil {
		return err
	}
	write := func(name, typ string, der []byte) error {
		return os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
	}
	if err := write(relayFiles.bundle, "CERTIFICATE", iss.Cert.Raw); err != nil {
		return err
	}
	for _, p := range []struct{ path, cert, key string }{
		{"/stub/signer", relayFiles.signerCert, relayFiles.signerKey},
		{"/stub/relay", relayFiles.relayCert, relayFiles.relayKey},
	} {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		der, err := x509ca.SignX509SVID(now, iss, x509ca.SVIDParams{ID: spiffeid.RequireFromPath(benchTD, p.path), TTL: 24 * time.Hour, PublicKey: key.Public()})
		if err != nil {
			return err
		}
		pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		if err := write(p.cert, "CERTIFICATE", der); err != nil {
			return err
		}
		if err := write(p.key, "PRIVATE KEY", pkcs8); err != nil {
			return err
		}
	}
	return nil
}

// relayTLS returns the TLS configuration of one side of the relay's
// upstream hop: its SVID, the bundle, any peer of the trust domain.
func relayTLS(dir, cert, key string, server bool) (*tls.Config, error) {
	svid, err := x509svid.Load(filepath.Join(dir, cert), filepath.Join(dir, key))
	if err != nil {
		return nil, err
	}
	bundle, err := x509bundle.Load(benchTD, filepath.Join(dir, relayFiles.bundle))
	if err != nil {
		return nil, err
	}
	var conf *tls.Config
	if server {
		conf = tlsconfig.MTLSServerConfig(svid, bundle, tlsconfig.AuthorizeMemberOf(benchTD))
	} else {
		conf = tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeMemberOf(benchTD))
	}
	conf.MinVersion = tls.VersionTLS13
	return conf, nil
}

// signerServer signs a JWT-SVID for each request.
type signerServer struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	key *ecdsa.PrivateKey
	hdr string // encoded header
}

func (s *signerServer) FetchJWTSVID(_ context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	if len(req.Audience) == 0 {
		return nil, status.Error(codes.InvalidArgument, "no audience")
	}
	now := time.Now()
	body, err := json.Marshal(struct {
		Sub string   `json:"sub"`
		Aud []string `json:"aud"`
		Iat int64    `json:"iat"`
		Exp int64    `json:"exp"`
	}{relaySubject.String(), req.Audience, now.Unix(), now.Add(relayTTL).Unix()})
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	token, err := jwsES256(s.key, s.hdr, body)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &workload.JWTSVIDResponse{Svids: []*workload.JWTSVID{{SpiffeId: relaySubject.String(), Svid: token}}}, nil
}

// runSignerChild serves the signer on a loopback port, printed after
// readyLine, until stdin closes.
func runSignerChild() error {
	conf, err := relayTLS(os.Getenv(relayDirEnv), relayFiles.signerCert, relayFiles.signerKey, true)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	hdr, err := json.Marshal(map[string]string{"alg": "ES256", "kid": "relay", "typ": "JWT"})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(conf)))
	workload.RegisterSpiffeWorkloadAPIServer(g, &signerServer{key: key, hdr: base64.RawURLEncoding.EncodeToString(hdr)})
	return serveUntilStdinCloses(g, lis, readyLine+" "+lis.Addr().String())
}

// relayServer forwards FetchJWTSVID to the signer.
type relayServer struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	up workload.SpiffeWorkloadAPIClient
}

func (s *relayServer) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	return s.up.FetchJWTSVID(ctx, req)
}

// runRelayChild serves the relay on socket until stdin closes, with one
// connection to the signer.
func runRelayChild(socket string) error {
	conf, err := relayTLS(os.Getenv(relayDirEnv), relayFiles.relayCert, relayFiles.relayKey, false)
	if err != nil {
		return err
	}
	cc, err := grpc.NewClient(os.Getenv(relayAddrEnv), grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		return err
	}
	defer cc.Close()
	up := workload.NewSpiffeWorkloadAPIClient(cc)
	// Connect before serving: the first measured call must not pay for
	// the handshake.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := up.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"warm-up"}}); err != nil {
		return fmt.Errorf("signer: %w", err)
	}
	_ = os.Remove(socket)
	lis, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	g := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(g, &relayServer{up: up})
	return serveUntilStdinCloses(g, lis, readyLine)
}

// serveUntilStdinCloses serves g on lis, prints ready once it is
// listening, and stops when stdin closes.
func serveUntilStdinCloses(g *grpc.Server, lis net.Listener, ready string) error {
	served := make(chan error, 1)
	go func() { served <- g.Serve(lis) }()
	fmt.Println(ready)
	waitStdinClosed()
	g.Stop()
	if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// relayStub is a running relay and its signer.
type relayStub struct {
	relay, signer *childProc
}

func (r *relayStub) pids() []int { return []int{r.relay.cmd.Process.Pid, r.signer.cmd.Process.Pid} }

func (r *relayStub) stop() {
	r.relay.stop()
	r.signer.stop()
}

// startRelay starts a signer and a relay serving the Workload API on
// socket.
func (b *bench) startRelay(ctx context.Context, socket string) (*relayStub, error) {
	dir, err := os.MkdirTemp(b.tmp, "relay")
	if err != nil {
		return nil, err
	}
	if err := writeRelayCerts(dir, time.Now()); err != nil {
		return nil, fmt.Errorf("relay stub certificates: %w", err)
	}
	signer, err := b.startChild(signerChild, "", 0, relayDirEnv+"="+dir)
	if err != nil {
		return nil, err
	}
	line, err := signer.waitLine(ctx, readyLine+" ", b.cfg.Timeout)
	if err != nil {
		signer.stop()
		return nil, fmt.Errorf("relay stub's signer: %w", err)
	}
	addr := strings.TrimPrefix(line, readyLine+" ")
	relay, err := b.startChild(relayChild, socket, 0, relayDirEnv+"="+dir, relayAddrEnv+"="+addr)
	if err == nil {
		_, err = relay.waitLine(ctx, readyLine, b.cfg.Timeout)
		if err != nil {
			relay.stop()
		}
	}
	if err != nil {
		signer.stop()
		return nil, fmt.Errorf("relay stub: %w", err)
	}
	return &relayStub{relay: relay, signer: signer}, nil
}
