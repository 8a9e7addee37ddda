package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Kinds of SVID the server signs (label kind).
const (
	KindX509  = "x509"
	KindJWT   = "jwt"
	KindAgent = "agent" // agent X.509-SVIDs, at attestation and renewal
)

// Results of a join token presented at attestation (label result).
const (
	TokenConsumed = "consumed"
	TokenRefused  = "refused"
)

// Server holds the metrics of a CA server.
type Server struct {
	defs []Definition

	entries          *funcGauges
	agents           *funcGauges
	caKeys           *caKeyCollector
	signed           *prometheus.CounterVec
	signLatency      *prometheus.HistogramVec
	syncStreams      prometheus.Gauge
	eventsPushed     prometheus.Counter
	propagation      prometheus.Observer
	joinTokens       *prometheus.CounterVec
	adminCalls       *prometheus.CounterVec
	dsLatency        *prometheus.HistogramVec
	dsErrors         *prometheus.CounterVec
	upstreamFailures prometheus.Counter
}

// NewServer registers the server's metrics on reg.
func NewServer(reg prometheus.Registerer) *Server {
	b := &builder{reg: reg}
	s := &Server{
		entries:     b.funcGauge("writ_server_entries", "Registration entries this server knows (excluding any under the reserved path)."),
		agents:      b.funcGauge("writ_server_agents", "Agents by state: connected (with an open Sync stream to this server), attested (recorded and not banned), banned.", "state"),
		caKeys:      b.caKeys(),
		signed:      b.counter("writ_server_svids_signed_total", "SVIDs signed, by kind: x509 (workload X.509-SVIDs), jwt (JWT-SVIDs), agent (agent X.509-SVIDs).", "kind"),
		signLatency: b.histogram("writ_server_svid_signing_duration_seconds", "Time to sign one SVID, by kind.", latencyBuckets, "kind"),
		syncStreams: b.gauge("writ_server_sync_streams_open", "Sync streams open from agents to this server.").WithLabelValues(),
		eventsPushed: b.counter("writ_server_sync_events_pushed_total",
			"Messages pushed to agents on Sync streams (each carries entry changes, agent state, a bundle, or a full set).").WithLabelValues(),
		propagation: b.histogram("writ_server_sync_propagation_delay_seconds",
			"Time from this server reading a change from the datastore's change feed to sending it on a Sync stream.",
			[]float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}).WithLabelValues(),
		joinTokens: b.counter("writ_server_join_tokens_total", "Join tokens presented at attestation, by result: consumed (accepted) or refused (unknown, expired, used).", "result"),
		adminCalls: b.counter("writ_server_admin_calls_total", "Admin API calls, by full gRPC method name and status code.", "method", "code"),
		dsLatency:  b.histogram("writ_server_datastore_operation_duration_seconds", "Time of each datastore operation, by operation (the datastore.Store method).", latencyBuckets, "operation"),
		dsErrors: b.counter("writ_server_datastore_errors_total",
			"Datastore operations that failed, by operation; not-found and already-exists answers are not failures.", "operation"),
		upstreamFailures: b.counter("writ_server_upstream_authority_errors_total", "Failed requests to the upstream authority that signs CA certificates.").WithLabelValues(),
	}
	s.defs = b.defs
	for _, k := range []string{KindX509, KindJWT, KindAgent} {
		s.signed.WithLabelValues(k)
	}
	for _, r := range []string{TokenConsumed, TokenRefused} {
		s.joinTokens.WithLabelValues(r)
	}
	return s
}

// NodeStats are counts the node API reports at scrape time.
type NodeStats struct {
	Entries         int
	ConnectedAgents int
	AttestedAgents  int
	BannedAgents    int
}

// ObserveNode makes fn the source of the entry and agent gauges.
func (s *Server) ObserveNode(fn func() NodeStats) {
	if s == nil {
		return
	}
	s.entries.set(func() []LabeledValue {
		return []LabeledValue{{Value: float64(fn().Entries)}}
	})
	s.agents.set(func() []LabeledValue {
		st := fn()
		return []LabeledValue{
			{Labels: []string{"connected"}, Value: float64(st.ConnectedAgents)},
			{Labels: []string{"attested"}, Value: float64(st.AttestedAgents)},
			{Labels: []string{"banned"}, Value: float64(st.BannedAgents)},
		}
	})
}

// CAKey is one CA key as the CA gauges see it.
type CAKey struct {
	Kind, State string
	NotAfter    time.Time
}

// ObserveCAKeys makes fn the source of the CA key gauges; it is called
// once per scrape. fn returning ok false (the datastore did not answer)
// leaves them out of the scrape.
func (s *Server) ObserveCAKeys(fn func() (keys []CAKey, ok bool)) {
	if s == nil {
		return
	}
	s.caKeys.mu.Lock()
	s.caKeys.fn = fn
	s.caKeys.mu.Unlock()
}

// caKeyCollector reports the CA key count and expiry gauges from one read
// of the keys.
type caKeyCollector struct {
	count, notAfter *prometheus.Desc
	mu              sync.Mutex // guards fn
	fn              func() ([]CAKey, bool)
}

func (b *builder) caKeys() *caKeyCollector {
	const (
		countName    = "writ_server_ca_keys"
		countHelp    = "CA keys recorded in the datastore, by kind (x509, jwt) and state (prepared, active, retired, tainted)."
		notAfterName = "writ_server_ca_key_not_after_timestamp_seconds"
		notAfterHelp = "Latest expiry (Unix time) of the CA keys of each kind and state; active minus time() is how long signing can go on without a rotation."
	)
	c := &caKeyCollector{
		count:    prometheus.NewDesc(countName, countHelp, []string{"kind", "state"}, nil),
		notAfter: prometheus.NewDesc(notAfterName, notAfterHelp, []string{"kind", "state"}, nil),
	}
	b.defs = append(b.defs, Definition{Name: countName, Type: "gauge", Labels: []string{"kind", "state"}, Help: countHelp})
	b.add(c, Definition{Name: notAfterName, Type: "gauge", Labels: []string{"kind", "state"}, Help: notAfterHelp})
	return c
}

func (c *caKeyCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.count
	ch <- c.notAfter
}

func (c *caKeyCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	fn := c.fn
	c.mu.Unlock()
	if fn == nil {
		return
	}
	keys, ok := fn()
	if !ok {
		return
	}
	type kindState struct{ kind, state string }
	n := map[kindState]int{}
	latest := map[kindState]time.Time{}
	for _, k := range keys {
		ks := kindState{k.Kind, k.State}
		n[ks]++
		if k.NotAfter.After(latest[ks]) {
			latest[ks] = k.NotAfter
		}
	}
	for ks, v := range n {
		ch <- prometheus.MustNewConstMetric(c.count, prometheus.GaugeValue, float64(v), ks.kind, ks.state)
		ch <- prometheus.MustNewConstMetric(c.notAfter, prometheus.GaugeValue, float64(latest[ks].UnixNano())/1e9, ks.kind, ks.state)
	}
}

// Signed counts one SVID of kind signed in d.
func (s *Server) Signed(kind string, d time.Duration) {
	if s == nil {
		return
	}
	s.signed.WithLabelValues(kind).Inc()
	s.signLatency.WithLabelValues(kind).Observe(d.Seconds())
}

// SyncStreamOpened and SyncStreamClosed track open Sync streams.
func (s *Server) SyncStreamOpened() {
	if s != nil {
		s.syncStreams.Inc()
	}
}

// SyncStreamClosed: see SyncStreamOpened.
func (s *Server) SyncStreamClosed() {
	if s != nil {
		s.syncStreams.Dec()
	}
}

// SyncSent counts one message sent on a Sync stream. since is when the
// server read the oldest change it carries (zero: none, as in a first
// full set or a bundle-only message).
func (s *Server) SyncSent(since time.Time, now time.Time) {
	if s == nil {
		return
	}
	s.eventsPushed.Inc()
	if !since.IsZero() {
		s.propagation.Observe(max(now.Sub(since), 0).Seconds())
	}
}

// JoinToken counts a join token presented, with result TokenConsumed or
// TokenRefused.
func (s *Server) JoinToken(result string) {
	if s != nil {
		s.joinTokens.WithLabelValues(result).Inc()
	}
}

// AdminCall counts one admin API call.
func (s *Server) AdminCall(method, code string) {
	if s != nil {
		s.adminCalls.WithLabelValues(method, code).Inc()
	}
}

// DatastoreOp records one datastore operation; failed says it failed.
func (s *Server) DatastoreOp(op string, d time.Duration, failed bool) {
	if s == nil {
		return
	}
	s.dsLatency.WithLabelValues(op).Observe(d.Seconds())
	if failed {
		s.dsErrors.WithLabelValues(op).Inc()
	}
}

// UpstreamError counts a failed request to the upstream authority.
func (s *Server) UpstreamError() {
	if s != nil {
		s.upstreamFailures.Inc()
	}
}
