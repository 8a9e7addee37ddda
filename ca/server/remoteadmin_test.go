package server_test

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/server"
)

// TestNewChecksAdminIDs checks the remote admin settings New refuses.
func TestNewChecksAdminIDs(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	tests := []struct {
		name string
		bind string
		ids  []string
		ok   bool
	}{
		{name: "listed IDs", bind: "127.0.0.1:0", ids: []string{"spiffe://example.org/ops/a", "spiffe://example.org/ci/b"}, ok: true},
		{name: "bind address alone", bind: "127.0.0.1:0", ok: true},
		{name: "IDs without bind address", ids: []string{"spiffe://example.org/ops/a"}},
		{name: "other trust domain", bind: "127.0.0.1:0", ids: []string{"spiffe://other.test/ops/a"}},
		{name: "server ID", bind: "127.0.0.1:0", ids: []string{"spiffe://example.org/writ/server"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ids []spiffeid.ID
			for _, s := range tt.ids {
				ids = append(ids, spiffeid.RequireFromString(s))
			}
			_, err := server.New(server.Config{TrustDomain: td, DataDir: t.TempDir(), AdminBindAddress: tt.bind, AdminIDs: ids})
			if (err == nil) != tt.ok {
				t.Fatalf("New: %v, want ok %v", err, tt.ok)
			}
		})
	}
}
