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
	"net"
	"os"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	"writ.dev/writ/ca/x509ca"
)

// The stub Workload API: the protocol's ceiling on this machine. It runs
// in a child process, as the agent does, answers every call with a
// response built once at start-up, and attests nobody.

// stubAudience is the audience of the stub's JWT-SVID.
const stubAudience = "bench"

// stubFixture holds the stub's fixed responses.
type stubFixture struct {
	x509     *workload.X509SVIDResponse
	jwt      *workload.JWTSVIDResponse
	validate *workload.ValidateJWTSVIDResponse
}

// newStubFixture makes a CA and n X.509-SVIDs signed by it, as Writ
// signs them, and a JWT-SVID for stubAudience.
func newStubFixture(n int, now time.Time) (*stubFixture, error) {
	iss, err := newIssuer(now)
	if err != nil {
		return nil, err
	}
	fx := &stubFixture{x509: &workload.X509SVIDResponse{}}
	for i := range n {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		id := spiffeid.RequireFromPathf(benchTD, "/stub/w%d", i)
		der, err := x509ca.SignX509SVID(now, iss, x509ca.SVIDParams{ID: id, TTL: time.Hour, PublicKey: key.Public()})
		if err != nil {
			return nil, err
		}
		pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, err
		}
		fx.x509.Svids = append(fx.x509.Svids, &workload.X509SVID{
			SpiffeId:    id.String(),
			X509Svid:    der,
			X509SvidKey: pkcs8,
			Bundle:      iss.Cert.Raw,
		})
	}
	sub := spiffeid.RequireFromPath(benchTD, "/stub/w0").String()
	claims := map[string]any{"sub": sub, "aud": []any{stubAudience}, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	token, err := signES256(claims)
	if err != nil {
		return nil, err
	}
	fx.jwt = &workload.JWTSVIDResponse{Svids: []*workload.JWTSVID{{SpiffeId: sub, Svid: token}}}
	pb, err := structpb.NewStruct(claims)
	if err != nil {
		return nil, err
	}
	fx.validate = &workload.ValidateJWTSVIDResponse{SpiffeId: sub, Claims: pb}
	return fx, nil
}

// signES256 returns a compact JWS of claims signed by a new P-256 key.
func signES256(claims map[string]any) (string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	hdr, err := json.Marshal(map[string]string{"alg": "ES256", "kid": "stub", "typ": "JWT"})
	if err != nil {
		return "", err
	}
	body, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	return jwsES256(key, base64.RawURLEncoding.EncodeToString(hdr), body)
}

// jwsES256 returns the compact JWS of an encoded header and a body,
// signed by key.
func jwsES256(key *ecdsa.PrivateKey, header string, body []byte) (string, error) {
	enc := base64.RawURLEncoding
	signing := header + "." + enc.EncodeToString(body)
	digest := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64) // JWS ES256: r and s, 32 bytes each
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signing + "." + enc.EncodeToString(sig), nil
}

// stubServer answers with the fixture.
type stubServer struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	fx *stubFixture
}

func (s *stubServer) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	if err := stream.Send(s.fx.x509); err != nil {
		return err
	}
	<-stream.Context().Done() // a stream stays open, as the agent's do
	return nil
}

func (s *stubServer) FetchJWTSVID(context.Context, *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	return s.fx.jwt, nil
}

func (s *stubServer) ValidateJWTSVID(context.Context, *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	return s.fx.validate, nil
}

// runStubChild serves the stub on socket with an n-SVID response until
// stdin closes.
func runStubChild(socket string, n int) error {
	fx, err := newStubFixture(n, time.Now())
	if err != nil {
		return err
	}
	_ = os.Remove(socket)
	lis, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	g := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(g, &stubServer{fx: fx})
	served := make(chan error, 1)
	go func() { served <- g.Serve(lis) }()
	fmt.Println(readyLine)
	waitStdinClosed()
	g.Stop()
	if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// envInt returns the integer value of an environment variable.
func envInt(name string) (int, error) {
	n, err := strconv.Atoi(os.Getenv(name))
	if err != nil {
		return 0, fmt.Errorf("$%s: %w", name, err)
	}
	return n, nil
}
