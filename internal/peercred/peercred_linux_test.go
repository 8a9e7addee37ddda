package peercred_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"writ.dev/writ/internal/peercred"
)

// socketPath returns a Unix socket path short enough for sun_path.
func socketPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "w")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "s")
}

func self() peercred.Cred {
	return peercred.Cred{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
}

func TestFromConn(t *testing.T) {
	path := socketPath(t)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	type result struct {
		cred peercred.Cred
		err  error
	}
	accepted := make(chan result, 1)
	go func() {
		c, err := l.AcceptUnix()
		if err != nil {
			accepted <- result{err: err}
			return
		}
		defer c.Close()
		cred, err := peercred.FromConn(c)
		accepted <- result{cred, err}
	}()

	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// The client side sees the server, which is this process too.
	if got, err := peercred.FromConn(c); err != nil || got != self() {
		t.Errorf("client FromConn = %+v, %v; want %+v", got, err, self())
	}
	r := <-accepted
	if r.err != nil || r.cred != self() {
		t.Errorf("server FromConn = %+v, %v; want %+v", r.cred, r.err, self())
	}
}

func TestFromConnClosed(t *testing.T) {
	a, b, err := unixPair()
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	a.Close()
	if _, err := peercred.FromConn(a); err == nil {
		t.Error("FromConn on a closed connection succeeded")
	}
	if _, err := peercred.FromConn(nil); err == nil {
		t.Error("FromConn(nil) succeeded")
	}
}

func unixPair() (*net.UnixConn, *net.UnixConn, error) {
	dir, err := os.MkdirTemp("", "w")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, nil, err
	}
	defer l.Close()
	a, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, nil, err
	}
	b, err := l.AcceptUnix()
	if err != nil {
		a.Close()
		return nil, nil, err
	}
	return a, b, nil
}

func TestHandshakeRefusesNonUnix(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	creds := peercred.TransportCredentials()
	if _, _, err := creds.ServerHandshake(a); err == nil {
		t.Error("ServerHandshake on a pipe succeeded")
	}
	if _, _, err := creds.ClientHandshake(context.Background(), "x", a); err == nil {
		t.Error("ClientHandshake on a pipe succeeded")
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Skipf("no TCP: %v", err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			defer c.Close()
			time.Sleep(100 * time.Millisecond)
		}
	}()
	tc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if _, _, err := creds.ServerHandshake(tc); err == nil {
		t.Error("ServerHandshake on TCP succeeded")
	}
}

func TestTransportCredentials(t *testing.T) {
	path := socketPath(t)
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}

	type seen struct {
		cred peercred.Cred
		ok   bool
	}
	got := make(chan seen, 1)
	srv := grpc.NewServer(
		grpc.Creds(peercred.TransportCredentials()),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			c, ok := peercred.FromContext(ctx)
			got <- seen{c, ok}
			return h(ctx, req)
		}),
	)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	defer func() {
		srv.Stop()
		<-served
	}()

	for _, tt := range []struct {
		name string
		opt  grpc.DialOption
		// serverCred: whether the client learns the server's credentials.
		serverCred bool
	}{
		{name: "insecure client", opt: grpc.WithTransportCredentials(insecure.NewCredentials())},
		{name: "peercred client", opt: grpc.WithTransportCredentials(peercred.TransportCredentials()), serverCred: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := grpc.NewClient("unix://"+path, tt.opt)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var p peer.Peer
			if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
				t.Fatal(err)
			}
			s := <-got
			if !s.ok || s.cred != self() {
				t.Errorf("server saw %+v, %v; want %+v", s.cred, s.ok, self())
			}
			if tt.serverCred {
				info, ok := p.AuthInfo.(peercred.AuthInfo)
				if !ok || info.Cred != self() || info.AuthType() != peercred.AuthType {
					t.Errorf("client saw AuthInfo %#v, want peercred of %+v", p.AuthInfo, self())
				}
			}
		})
	}
}

func TestFromContextWithoutPeer(t *testing.T) {
	if _, ok := peercred.FromContext(context.Background()); ok {
		t.Error("FromContext without a peer reported ok")
	}
	ctx := peer.NewContext(context.Background(), &peer.Peer{})
	if _, ok := peercred.FromContext(ctx); ok {
		t.Error("FromContext with a peer without AuthInfo reported ok")
	}
	ctx = peer.NewContext(context.Background(), &peer.Peer{AuthInfo: otherAuth{}})
	if _, ok := peercred.FromContext(ctx); ok {
		t.Error("FromContext with another AuthInfo reported ok")
	}
}

type otherAuth struct{}

func (otherAuth) AuthType() string { return "other" }
