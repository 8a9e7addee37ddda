package authz_test

// Benchmarks, in one run:
//
//	go test -run '^$' -bench . -benchtime 3s ./workloadapi/authz/
//
// BenchmarkJWTMiddlewareVsES256 times, interleaved in the same loop so
// that both see the same machine state, a raw ES256 verification (SHA-256
// of the signing input and ECDSA P-256 verification, the signature
// already decoded) and one request through the HTTP middleware. It
// reports both and "rate-%-of-raw", the middleware's request rate as a
// percentage of the raw verification rate. "cold": every request is
// validated in full (the token cache disabled), the cost of a token seen
// for the first time. "warm": the token cache on and the token repeated,
// as clients reuse a JWT-SVID for half its lifetime.
//
// BenchmarkMTLSHandshake reports full (and resumed) handshakes per second
// with the helpers next to plain crypto/tls, configured with the same
// certificates and keys (standard chain and host name verification).

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/workloadapi/authz"
)

// discardWriter is the cheapest http.ResponseWriter.
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }

func BenchmarkJWTMiddlewareVsES256(b *testing.B) {
	p := newPKI(b, td)
	tok := p.token(b, "/web", []string{audience}, t0, 5*time.Minute)

	// Raw verification inputs.
	dot := strings.LastIndexByte(tok, '.')
	input := []byte(tok[:dot])
	rawSig, err := base64.RawURLEncoding.DecodeString(tok[dot+1:])
	if err != nil || len(rawSig) != 64 {
		b.Fatalf("signature: %v (%d bytes)", err, len(rawSig))
	}
	sig, err := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(rawSig[:32]), new(big.Int).SetBytes(rawSig[32:])})
	if err != nil {
		b.Fatal(err)
	}
	pub := p.jwtKey.Signer.Public().(*ecdsa.PublicKey)
	raw := func() {
		h := sha256.Sum256(input)
		if !ecdsa.VerifyASN1(pub, h[:], sig) {
			b.Fatal("raw verification failed")
		}
	}

	for _, bc := range []struct {
		name      string
		cacheSize int
	}{{"cold", -1}, {"warm", 0}} {
		b.Run(bc.name, func(b *testing.B) {
			a, err := authz.NewJWTAuthorizer(authz.JWTConfig{
				Bundles:        p.jwtBundle(),
				Audience:       []string{audience},
				Policy:         authz.IDs(spiffeid.RequireFromPath(td, "/web")),
				Clock:          fakeclock.New(t0),
				TokenCacheSize: bc.cacheSize,
			})
			if err != nil {
				b.Fatal(err)
			}
			h := a.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
			req := httptest.NewRequest(http.MethodGet, "/hello", nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			w := &discardWriter{h: http.Header{}}
			serve := func() {
				w.code = http.StatusOK
				h.ServeHTTP(w, req)
				if w.code != http.StatusOK {
					b.Fatalf("status %d", w.code)
				}
			}
			serve() // warms the cache when there is one
			var rawD, mwD time.Duration
			n := 0
			for b.Loop() {
				t1 := time.Now()
				raw()
				t2 := time.Now()
				serve()
				t3 := time.Now()
				rawD += t2.Sub(t1)
				mwD += t3.Sub(t2)
				n++
			}
			rawNs := float64(rawD.Nanoseconds()) / float64(n)
			mwNs := float64(mwD.Nanoseconds()) / float64(n)
			b.ReportMetric(rawNs, "raw-ES256-ns/op")
			b.ReportMetric(mwNs, "middleware-ns/op")
			b.ReportMetric(100*rawNs/mwNs, "rate-%-of-raw")
		})
	}
}

func BenchmarkMTLSHandshake(b *testing.B) {
	p := newPKI(b, td)
	serverSVID := p.svid(b, "/api", time.Hour, "api.test")
	clientSVID := p.svid(b, "/web", time.Hour)
	serverSrc := newSource(serverSVID, p.x509Bundle())
	clientSrc := newSource(clientSVID, p.x509Bundle())
	tlsCert := func(s *source) tls.Certificate {
		return tls.Certificate{Certificate: [][]byte{s.svid.Certificates[0].Raw}, PrivateKey: s.svid.PrivateKey, Leaf: s.svid.Certificates[0]}
	}
	roots := x509.NewCertPool()
	roots.AddCert(p.ca.Cert)

	configs := map[string]func() (client, server *tls.Config){
		"authz": func() (*tls.Config, *tls.Config) {
			c := authz.ClientTLSConfig(clientSrc, authz.IDs(serverSVID.ID))
			c.ServerName = "api.test"
			return c, authz.ServerTLSConfig(serverSrc, authz.IDs(clientSVID.ID))
		},
		"plain-crypto-tls": func() (*tls.Config, *tls.Config) {
			return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{tlsCert(clientSrc)}, RootCAs: roots, ServerName: "api.test"},
				&tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{tlsCert(serverSrc)}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: roots}
		},
	}
	for _, resumed := range []bool{false, true} {
		for _, name := range []string{"authz", "plain-crypto-tls"} {
			label := name + "/full"
			if resumed {
				label = name + "/resumed"
			}
			b.Run(label, func(b *testing.B) {
				client, server := configs[name]()
				if resumed {
					client.ClientSessionCache = tls.NewLRUClientSessionCache(4)
					if err := pipeHandshake(client, server); err != nil {
						b.Fatal(err)
					}
				}
				for b.Loop() {
					if err := pipeHandshake(client, server); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
			})
		}
	}
}

// socketPair returns the two ends of a connected Unix stream socket
// pair: buffered (both sides of a TLS handshake may write at once, which
// would deadlock net.Pipe) and free of TCP's costs.
func socketPair() (net.Conn, net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		conns[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, nil, err
		}
	}
	return conns[0], conns[1], nil
}

// pipeHandshake runs one handshake over a socket pair, then sends one
// byte from the server so that the client reads its session tickets.
func pipeHandshake(clientCfg, serverCfg *tls.Config) error {
	c1, c2, err := socketPair()
	if err != nil {
		return err
	}
	defer c1.Close()
	defer c2.Close()
	errc := make(chan error, 1)
	go func() {
		s := tls.Server(c2, serverCfg)
		err := s.Handshake()
		if err == nil {
			_, err = s.Write([]byte{'x'})
		}
		errc <- err
	}()
	c := tls.Client(c1, clientCfg)
	err = c.Handshake()
	if err == nil {
		_, err = io.ReadFull(c, make([]byte, 1))
	}
	if err != nil {
		c1.Close()
		<-errc
		return err
	}
	return <-errc
}
