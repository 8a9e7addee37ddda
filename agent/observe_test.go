package agent_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"writ.dev/writ/agent"
	"writ.dev/writ/agent/internal/fakenode"
	"writ.dev/writ/internal/metrics"
)

// TestReadinessAndMetrics: not ready before the first sync, ready with a
// connection and its SVID cached (and the gauges say so), not ready once
// the server refuses the agent.
func TestReadinessAndMetrics(t *testing.T) {
	e := newEnv(t, fakenode.Options{})
	w := e.srv.Entry("/web", "unix:uid:1")
	e.srv.SetEntries(w)
	reg := prometheus.NewRegistry()
	cfg := e.attestConfig()
	cfg.Metrics = metrics.NewAgent(reg)
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Readiness(context.Background()); !errors.Is(err, agent.ErrNoValidSVID) {
		t.Fatalf("Readiness before Run = %v, want ErrNoValidSVID", err)
	}
	r := e.start(cfg)
	e.ready(r)
	eventually(t, "ready with the SVID cached", func() bool {
		return r.a.Readiness(context.Background()) == nil && r.a.Cache().Stats().X509SVIDs == 1
	})
	want := `
# HELP writ_agent_server_connected 1 while the agent holds a synced connection to a CA server, 0 otherwise.
# TYPE writ_agent_server_connected gauge
writ_agent_server_connected 1
# HELP writ_agent_svids_cached Workload SVIDs the agent holds, by kind (x509, jwt).
# TYPE writ_agent_svids_cached gauge
writ_agent_svids_cached{kind="jwt"} 0
writ_agent_svids_cached{kind="x509"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "writ_agent_server_connected", "writ_agent_svids_cached"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(reg, "writ_agent_svid_soonest_expiry_timestamp_seconds"); n != 1 {
		t.Fatalf("soonest expiry gauge: %d series, want 1", n)
	}

	e.srv.Evict(true)
	eventually(t, "not ready once refused", func() bool {
		e.clk.Advance(agent.ReconnectSpread)
		return errors.Is(r.a.Readiness(context.Background()), agent.ErrNoValidSVID)
	})
}
