package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Agent holds the metrics of a node agent and its Workload API.
type Agent struct {
	defs []Definition

	cached        *funcGauges
	soonest       *funcGauges
	agentExpiry   *funcGauges
	rotations     prometheus.Counter
	batchSize     prometheus.Observer
	connected     prometheus.Gauge
	failovers     prometheus.Counter
	calls         *prometheus.CounterVec
	streams       *prometheus.GaugeVec
	attestLatency prometheus.Observer
}

// NewAgent registers the agent's metrics on reg.
func NewAgent(reg prometheus.Registerer) *Agent {
	b := &builder{reg: reg}
	a := &Agent{
		cached: b.funcGauge("writ_agent_svids_cached", "Workload SVIDs the agent holds, by kind (x509, jwt).", "kind"),
		soonest: b.funcGauge("writ_agent_svid_soonest_expiry_timestamp_seconds",
			"Earliest expiry (Unix time) of the workload X.509-SVIDs the agent holds; absent when it holds none."),
		agentExpiry: b.funcGauge("writ_agent_identity_expiry_timestamp_seconds", "Expiry (Unix time) of the agent's own SVID; absent before attestation."),
		rotations:   b.counter("writ_agent_svid_rotations_total", "Workload X.509-SVIDs received from the server to replace or add to the cache (each new signature counts).").WithLabelValues(),
		batchSize: b.histogram("writ_agent_signing_batch_size", "X.509-SVIDs asked for in each batch signing call to the server.",
			[]float64{1, 2, 5, 10, 20, 50, 100, 200, 500}).WithLabelValues(),
		connected: b.gauge("writ_agent_server_connected", "1 while the agent holds a synced connection to a CA server, 0 otherwise.").WithLabelValues(),
		failovers: b.counter("writ_agent_server_failovers_total", "Connections to a CA server other than the one the agent last synced with.").WithLabelValues(),
		calls:     b.counter("writ_agent_workload_api_calls_total", "Workload API calls finished, by RPC (the method name) and gRPC status code.", "rpc", "code"),
		streams:   b.gauge("writ_agent_workload_api_streams_open", "Workload API streams open, by RPC.", "rpc"),
		attestLatency: b.histogram("writ_agent_workload_attestation_duration_seconds", "Time to attest one Workload API caller (peer credentials to selectors).",
			latencyBuckets).WithLabelValues(),
	}
	a.defs = b.defs
	a.connected.Set(0)
	return a
}

// AgentStats are what the agent reports at scrape time.
type AgentStats struct {
	X509SVIDs, JWTSVIDs int
	// SoonestExpiry is the earliest workload X.509-SVID expiry (zero if
	// none); AgentSVIDExpiry the agent SVID's (zero before attestation).
	SoonestExpiry, AgentSVIDExpiry time.Time
}

// ObserveCache makes fn the source of the cache gauges.
func (a *Agent) ObserveCache(fn func() AgentStats) {
	if a == nil {
		return
	}
	a.cached.set(func() []LabeledValue {
		st := fn()
		return []LabeledValue{{Labels: []string{"x509"}, Value: float64(st.X509SVIDs)}, {Labels: []string{"jwt"}, Value: float64(st.JWTSVIDs)}}
	})
	a.soonest.set(func() []LabeledValue { return timestamp(fn().SoonestExpiry) })
	a.agentExpiry.set(func() []LabeledValue { return timestamp(fn().AgentSVIDExpiry) })
}

func timestamp(t time.Time) []LabeledValue {
	if t.IsZero() {
		return nil
	}
	return []LabeledValue{{Value: float64(t.UnixNano()) / 1e9}}
}

// Rotated counts n X.509-SVIDs received.
func (a *Agent) Rotated(n int) {
	if a != nil && n > 0 {
		a.rotations.Add(float64(n))
	}
}

// SigningBatch records the size of one batch signing call.
func (a *Agent) SigningBatch(n int) {
	if a != nil {
		a.batchSize.Observe(float64(n))
	}
}

// Connected records whether the agent holds a synced server connection.
func (a *Agent) Connected(up bool) {
	if a == nil {
		return
	}
	if up {
		a.connected.Set(1)
	} else {
		a.connected.Set(0)
	}
}

// Failover counts a connection to another server than the last one.
func (a *Agent) Failover() {
	if a != nil {
		a.failovers.Inc()
	}
}

// WorkloadCall counts a finished Workload API call.
func (a *Agent) WorkloadCall(rpc, code string) {
	if a != nil {
		a.calls.WithLabelValues(rpc, code).Inc()
	}
}

// StreamOpened and StreamClosed track open Workload API streams.
func (a *Agent) StreamOpened(rpc string) {
	if a != nil {
		a.streams.WithLabelValues(rpc).Inc()
	}
}

// StreamClosed: see StreamOpened.
func (a *Agent) StreamClosed(rpc string) {
	if a != nil {
		a.streams.WithLabelValues(rpc).Dec()
	}
}

// Attested records the time one workload attestation took.
func (a *Agent) Attested(d time.Duration) {
	if a != nil {
		a.attestLatency.Observe(d.Seconds())
	}
}
