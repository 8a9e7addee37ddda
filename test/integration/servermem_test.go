package integration_test

import (
	"path/filepath"
	"testing"
)

// TestIntegrationServerMemoryLimit: `writ server run` keeps a soft memory
// limit (go_gc_gomemlimit_bytes) of at least its 64 MiB floor instead of
// none, and a GOMEMLIMIT set in the environment wins.
func TestIntegrationServerMemoryLimit(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name       string
		gomemlimit string
		ok         func(float64) bool
	}{
		// No limit is math.MaxInt64.
		{name: "kept by the server", ok: func(v float64) bool { return v >= 64*mib && v < 1<<40 }},
		{name: "GOMEMLIMIT wins", gomemlimit: "3GiB", ok: func(v float64) bool { return v == 3<<30 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.gomemlimit != "" {
				t.Setenv("GOMEMLIMIT", tt.gomemlimit)
			}
			dir := shortTempDir(t)
			srv := startServer(t, filepath.Join(dir, "server"), "--log-format", "json", "--metrics-address", "127.0.0.1:0")
			addr := listenAddress(t, srv.log, "metrics endpoint")
			waitMetric(t, addr, "go_gc_gomemlimit_bytes", tt.ok)
		})
	}
}
