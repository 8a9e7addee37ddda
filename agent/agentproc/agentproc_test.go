package agentproc_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/agent"
	"writ.dev/writ/agent/agentproc"
)

func TestNewReportsConfigErrors(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	dir := t.TempDir()
	tests := []struct {
		name string
		cfg  agent.Config
		want error
	}{
		{name: "no trust domain", cfg: agent.Config{DataDir: dir, SocketPath: filepath.Join(dir, "s")}, want: agent.ErrConfig},
		{name: "socket path too long", cfg: agent.Config{TrustDomain: td, DataDir: dir, SocketPath: "/" + strings.Repeat("x", 200)}, want: agent.ErrConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := agentproc.New(agentproc.Config{Agent: tt.cfg})
			if !errors.Is(err, tt.want) {
				t.Fatalf("New: %v, want %v", err, tt.want)
			}
		})
	}
	p, err := agentproc.New(agentproc.Config{Agent: agent.Config{TrustDomain: td, DataDir: dir, SocketPath: filepath.Join(dir, "s"), InsecureBootstrap: true}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if p.Agent() == nil || p.WorkloadAPI() == nil {
		t.Fatal("New returned a process without its parts")
	}
}
