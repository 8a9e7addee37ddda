package server

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/datastore/boltstore"
	"writ.dev/writ/ca/datastore/datastoretest"
	"writ.dev/writ/internal/metrics"
)

func openMeasured(t *testing.T, reg prometheus.Registerer) datastore.Store {
	t.Helper()
	s, err := boltstore.Open(filepath.Join(t.TempDir(), "db"), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return measureStore(s, metrics.NewServer(reg), clock.Real())
}

// TestMeasuredStoreConformance: the metrics wrapper is still a
// conforming datastore.
func TestMeasuredStoreConformance(t *testing.T) {
	datastoretest.Run(t, func(t *testing.T) datastore.Store {
		return openMeasured(t, prometheus.NewRegistry())
	})
}

// TestMeasuredStoreCounts: operations are timed; contract answers and
// the caller's own errors are not failures.
func TestMeasuredStoreCounts(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := openMeasured(t, reg)
	ctx := context.Background()
	id := spiffeid.RequireFromString("spiffe://example.org/writ/agent/a")
	if _, err := s.FetchAgent(ctx, id); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("FetchAgent = %v, want ErrNotFound", err)
	}
	if err := s.CreateAgent(ctx, &datastore.Agent{SPIFFEID: id, AttestationType: "join_token"}); err != nil {
		t.Fatal(err)
	}
	errMine := errors.New("refused by the caller")
	if _, err := s.UpdateAgent(ctx, id, func(*datastore.Agent) error { return errMine }); !errors.Is(err, errMine) {
		t.Fatalf("UpdateAgent = %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, _ = s.ListAgents(cctx)
	if n := testutil.CollectAndCount(reg, "writ_server_datastore_operation_duration_seconds"); n < 3 {
		t.Fatalf("%d operations timed, want FetchAgent, CreateAgent, UpdateAgent at least", n)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(""), "writ_server_datastore_errors_total"); err != nil {
		t.Fatalf("errors counted for non-failures: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.FetchAgent(ctx, id); err == nil {
		t.Fatal("FetchAgent on a closed store succeeded")
	}
	want := `
# HELP writ_server_datastore_errors_total Datastore operations that failed, by operation; not-found and already-exists answers are not failures.
# TYPE writ_server_datastore_errors_total counter
writ_server_datastore_errors_total{operation="FetchAgent"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "writ_server_datastore_errors_total"); err != nil {
		t.Fatal(err)
	}
}
