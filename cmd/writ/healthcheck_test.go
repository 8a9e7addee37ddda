package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// TestHealthcheckSaysWhatIsWrong: `server healthcheck` and `agent
// healthcheck` against a socket that is missing, not listened on, not a
// socket, or of something else say so in words, at once, not with a raw
// gRPC error after the timeout.
func TestHealthcheckSaysWhatIsWrong(t *testing.T) {
	dir := shortTempDir(t)
	missing := filepath.Join(dir, "missing.sock")
	regular := filepath.Join(dir, "file")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// A socket file left by a process that stopped: nobody listens.
	stale := filepath.Join(dir, "stale.sock")
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	lis.SetUnlinkOnClose(false)
	lis.Close()
	// A gRPC socket without the health service.
	other := filepath.Join(dir, "other.sock")
	ol, err := net.Listen("unix", other)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	go g.Serve(ol)
	t.Cleanup(g.Stop)
	// A server that is up but not serving.
	down := filepath.Join(dir, "down.sock")
	dl, err := net.Listen("unix", down)
	if err != nil {
		t.Fatal(err)
	}
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	g2 := grpc.NewServer()
	healthpb.RegisterHealthServer(g2, hs)
	go g2.Serve(dl)
	t.Cleanup(g2.Stop)

	for _, what := range []string{"server", "agent"} {
		for _, tc := range []struct {
			name, socket, want string
		}{
			{"missing", missing, "no " + what + " listening at " + missing + ": there is no such socket"},
			{"missing directory", filepath.Join(dir, "nodir", "x.sock"), "no " + what + " listening at"},
			{"stale", stale, "no " + what + " listening at " + stale + ": the socket exists but nothing accepts"},
			{"regular file", regular, regular + " is not a socket"},
			{"no health service", other, other + " does not serve health checks"},
			{"not serving", down, "the " + what + " at " + down + " is not serving (status NOT_SERVING)"},
		} {
			t.Run(what+"/"+tc.name, func(t *testing.T) {
				start := time.Now()
				r := runCLI(t, "", what, "healthcheck", "--admin-socket", tc.socket, "--timeout", "10s")
				if r.code != exitError || r.stdout != "" {
					t.Fatalf("%+v, want exit %d", r, exitError)
				}
				want := "writ: " + what + " is not healthy: " + tc.want
				if !strings.HasPrefix(r.stderr, want) {
					t.Errorf("stderr %q, want it to start with %q", r.stderr, want)
				}
				if strings.Contains(r.stderr, "rpc error") || strings.Contains(r.stderr, "desc =") {
					t.Errorf("stderr carries a raw gRPC error: %q", r.stderr)
				}
				if d := time.Since(start); d > 5*time.Second {
					t.Errorf("took %s: the failure should be found without waiting for the timeout", d)
				}
			})
		}
	}
}
