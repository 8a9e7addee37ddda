package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "wr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestAgentRunFlags(t *testing.T) {
	dir := shortTempDir(t)
	data := filepath.Join(dir, "data")
	// Every case names its own socket: the default one may be a running
	// agent's.
	sock := filepath.Join(dir, "api.sock")
	listCfg := filepath.Join(dir, "agent-list.yaml")
	if err := os.WriteFile(listCfg, []byte("trust-domain: example.org\ndata-dir: "+data+"\nsocket-path: "+sock+"\nserver-address:\n  - 127.0.0.1:1\n  - second-nohost\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(cfgFile, []byte("trust-domain: example.org\ndata-dir: "+data+"\nsocket-path: "+sock+"\nserver-address: 127.0.0.1:1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		args   []string
		env    map[string]string
		code   int
		stderr string
	}{
		{"no trust domain", []string{"agent", "run", "--socket-path", sock, "--data-dir", data}, nil, exitUsage, "--trust-domain is required"},
		{"bad trust domain", []string{"agent", "run", "--socket-path", sock, "--trust-domain", "Example.org", "--data-dir", data}, nil, exitUsage, "not a valid trust domain"},
		{"bad server address", []string{"agent", "run", "--socket-path", sock, "--trust-domain", "example.org", "--data-dir", data, "--server-address", "nohost"}, nil, exitUsage, "server address"},
		{"second server address repeated", []string{"agent", "run", "--socket-path", sock, "--trust-domain", "example.org", "--data-dir", data, "--server-address", "127.0.0.1:1", "--server-address", "second-nohost"}, nil, exitUsage, `server address "second-nohost"`},
		{"second server address after a comma", []string{"agent", "run", "--socket-path", sock, "--trust-domain", "example.org", "--data-dir", data, "--server-address", "127.0.0.1:1, second-nohost"}, nil, exitUsage, `server address "second-nohost"`},
		{"second server address in the environment", []string{"agent", "run", "--socket-path", sock, "--trust-domain", "example.org", "--data-dir", data}, map[string]string{"WRIT_SERVER_ADDRESS": "127.0.0.1:1,second-nohost"}, exitUsage, `server address "second-nohost"`},
		{"second server address in a config file list", []string{"agent", "run", "--config", listCfg}, nil, exitUsage, `server address "second-nohost"`},
		{"flag overrides the config file list", []string{"agent", "run", "--config", listCfg, "--server-address", "127.0.0.1:1"}, nil, exitError, "--join-token"},
		{"several good server addresses", []string{"agent", "run", "--socket-path", sock, "--trust-domain", "example.org", "--data-dir", data, "--server-address", "127.0.0.1:1,127.0.0.1:2", "--server-address", "localhost:3"}, nil, exitError, "--join-token"},
		{"socket path too long", []string{"agent", "run", "--trust-domain", "example.org", "--data-dir", data, "--socket-path", "/" + strings.Repeat("s", 120)}, nil, exitUsage, "longer than the 103"},
		{"data dir too long for the admin socket", []string{"agent", "run", "--socket-path", sock, "--trust-domain", "example.org", "--data-dir", "/" + strings.Repeat("d", 100)}, nil, exitUsage, "--data-dir"},
		{"both bootstraps", []string{"agent", "run", "--socket-path", sock, "--trust-domain", "example.org", "--data-dir", data, "--trust-bundle", "x.pem", "--insecure-bootstrap"}, nil, exitUsage, "exclude each other"},
		{"no identity", []string{"agent", "run", "--socket-path", sock, "--trust-domain", "example.org", "--data-dir", data, "--server-address", "127.0.0.1:1"}, nil, exitError, "--join-token"},
		{"config file", []string{"agent", "run", "--config", cfgFile}, nil, exitError, "--join-token"},
		{"token without trust", []string{"agent", "run", "--config", cfgFile}, map[string]string{"WRIT_JOIN_TOKEN": "secret-token-value"}, exitError, "--trust-bundle"},
		{"unexpected argument", []string{"agent", "run", "--config", cfgFile, "extra"}, nil, exitUsage, "unexpected argument"},
		{"per-uid connections above the total", []string{"agent", "run", "--socket-path", sock, "--trust-domain", "example.org", "--data-dir", data, "--workload-max-connections-per-uid", "1025"}, nil, exitUsage, "--workload-max-connections-per-uid 1025 must be between 1 and 1024"},
		{"no per-uid connections", []string{"agent", "run", "--socket-path", sock, "--trust-domain", "example.org", "--data-dir", data, "--workload-max-connections-per-uid", "0"}, nil, exitUsage, "--workload-max-connections-per-uid 0 must be"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			r := runCLI(t, "", tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.stderr) {
				t.Fatalf("code %d, stderr %q; want %d and %q", r.code, r.stderr, tc.code, tc.stderr)
			}
			if strings.Contains(r.stderr, "secret-token-value") {
				t.Fatal("join token printed")
			}
		})
	}
}

func TestAgentHealthcheck(t *testing.T) {
	dir := shortTempDir(t)
	sock := filepath.Join(dir, "agent-admin.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := health.NewServer()
	g := grpc.NewServer()
	healthpb.RegisterHealthServer(g, hs)
	go g.Serve(lis)
	defer g.Stop()

	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	if r := runCLI(t, "", "agent", "healthcheck", "--data-dir", dir); r.code != exitOK || !strings.Contains(r.stdout, "serving") {
		t.Fatalf("serving: %+v", r)
	}
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	if r := runCLI(t, "", "agent", "healthcheck", "--admin-socket", sock); r.code != exitError || !strings.Contains(r.stderr, "not healthy") {
		t.Fatalf("not serving: %+v", r)
	}
	if r := runCLI(t, "", "agent", "healthcheck", "--data-dir", filepath.Join(dir, "none"), "--timeout", "200ms"); r.code != exitError {
		t.Fatalf("no agent: %+v", r)
	}
}
