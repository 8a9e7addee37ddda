package metrics_test

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"writ.dev/writ/internal/metrics"
)

// recorder is a Registerer that notes the name of every metric a
// collector describes, independently of the package's own bookkeeping.
type recorder struct{ names []string }

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (r *recorder) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 16)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		m := fqName.FindStringSubmatch(d.String())
		if m == nil {
			return nil
		}
		r.names = append(r.names, m[1])
	}
	return nil
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = r.Register(c)
	}
}

func (r *recorder) Unregister(prometheus.Collector) bool { return false }

// docRow matches a metric row of docs/metrics.md's tables.
var docRow = regexp.MustCompile("(?m)^\\| `([a-z_]+)` \\| (counter|gauge|histogram) \\| ([a-z_, ]*) \\|")

// TestDocumented: docs/metrics.md lists every metric the server and agent
// register, with its type and labels, and nothing else.
func TestDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	type row struct{ typ, labels string }
	documented := map[string]row{}
	for _, m := range docRow.FindAllStringSubmatch(string(doc), -1) {
		if _, dup := documented[m[1]]; dup {
			t.Errorf("docs/metrics.md lists %s twice", m[1])
		}
		documented[m[1]] = row{m[2], strings.TrimSpace(m[3])}
	}
	rec := &recorder{}
	metrics.NewServer(rec)
	metrics.NewAgent(rec)
	registered := slices.Sorted(slices.Values(rec.names))
	defs := map[string]metrics.Definition{}
	for _, d := range metrics.Definitions() {
		defs[d.Name] = d
	}
	for _, name := range registered {
		d, ok := defs[name]
		if !ok {
			t.Errorf("%s is registered but has no Definition", name)
		}
		r, ok := documented[name]
		if !ok {
			t.Errorf("%s is registered but not in docs/metrics.md", name)
			continue
		}
		if r.typ != d.Type || r.labels != strings.Join(d.Labels, ", ") {
			t.Errorf("docs/metrics.md: %s is a %s with labels %q; it is a %s with labels %q", name, r.typ, r.labels, d.Type, strings.Join(d.Labels, ", "))
		}
	}
	for name := range documented {
		if !slices.Contains(registered, name) {
			t.Errorf("docs/metrics.md lists %s, which is not registered", name)
		}
	}
	if len(registered) != len(defs) {
		t.Errorf("%d metrics registered, %d defined", len(registered), len(defs))
	}
}

// TestNames: Prometheus conventions.
func TestNames(t *testing.T) {
	for _, d := range metrics.Definitions() {
		if !strings.HasPrefix(d.Name, "writ_server_") && !strings.HasPrefix(d.Name, "writ_agent_") {
			t.Errorf("%s: not writ_server_ or writ_agent_", d.Name)
		}
		if (d.Type == "counter") != strings.HasSuffix(d.Name, "_total") {
			t.Errorf("%s: a %s; only counters end in _total", d.Name, d.Type)
		}
		for _, l := range d.Labels {
			if strings.Contains(l, "id") {
				t.Errorf("%s: label %q looks like an identifier (unbounded)", d.Name, l)
			}
		}
	}
	reg := prometheus.NewPedanticRegistry()
	metrics.NewServer(reg)
	metrics.NewAgent(reg)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func TestNilIsSafe(t *testing.T) {
	var s *metrics.Server
	s.Signed(metrics.KindX509, time.Millisecond)
	s.SyncSent(time.Now(), time.Now())
	s.ObserveNode(func() metrics.NodeStats { return metrics.NodeStats{} })
	var a *metrics.Agent
	a.Connected(true)
	a.WorkloadCall("FetchX509SVID", "OK")
}

func TestServerValues(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := metrics.NewServer(reg)
	s.ObserveNode(func() metrics.NodeStats {
		return metrics.NodeStats{Entries: 3, ConnectedAgents: 1, AttestedAgents: 2, BannedAgents: 1}
	})
	notAfter := time.Unix(2_000_000_000, 0)
	reads := 0
	s.ObserveCAKeys(func() ([]metrics.CAKey, bool) {
		reads++
		return []metrics.CAKey{
			{Kind: "x509", State: "active", NotAfter: notAfter},
			{Kind: "x509", State: "retired", NotAfter: notAfter.Add(-time.Hour)},
			{Kind: "x509", State: "retired", NotAfter: notAfter.Add(-2 * time.Hour)},
		}, true
	})
	s.Signed(metrics.KindJWT, time.Millisecond)
	s.JoinToken(metrics.TokenRefused)
	s.SyncSent(time.Unix(10, 0), time.Unix(12, 0))
	want := `
# HELP writ_server_agents Agents by state: connected (with an open Sync stream to this server), attested (recorded and not banned), banned.
# TYPE writ_server_agents gauge
writ_server_agents{state="attested"} 2
writ_server_agents{state="banned"} 1
writ_server_agents{state="connected"} 1
# HELP writ_server_entries Registration entries this server knows (excluding any under the reserved path).
# TYPE writ_server_entries gauge
writ_server_entries 3
# HELP writ_server_svids_signed_total SVIDs signed, by kind: x509 (workload X.509-SVIDs), jwt (JWT-SVIDs), agent (agent X.509-SVIDs).
# TYPE writ_server_svids_signed_total counter
writ_server_svids_signed_total{kind="agent"} 0
writ_server_svids_signed_total{kind="jwt"} 1
writ_server_svids_signed_total{kind="x509"} 0
# HELP writ_server_join_tokens_total Join tokens presented at attestation, by result: consumed (accepted) or refused (unknown, expired, used).
# TYPE writ_server_join_tokens_total counter
writ_server_join_tokens_total{result="consumed"} 0
writ_server_join_tokens_total{result="refused"} 1
# HELP writ_server_ca_keys CA keys recorded in the datastore, by kind (x509, jwt) and state (prepared, active, retired, tainted).
# TYPE writ_server_ca_keys gauge
writ_server_ca_keys{kind="x509",state="active"} 1
writ_server_ca_keys{kind="x509",state="retired"} 2
# HELP writ_server_ca_key_not_after_timestamp_seconds Latest expiry (Unix time) of the CA keys of each kind and state; active minus time() is how long signing can go on without a rotation.
# TYPE writ_server_ca_key_not_after_timestamp_seconds gauge
writ_server_ca_key_not_after_timestamp_seconds{kind="x509",state="active"} 2e+09
writ_server_ca_key_not_after_timestamp_seconds{kind="x509",state="retired"} 1.9999964e+09
`
	names := []string{"writ_server_agents", "writ_server_entries", "writ_server_svids_signed_total", "writ_server_join_tokens_total", "writ_server_ca_keys", "writ_server_ca_key_not_after_timestamp_seconds"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
	if reads != 1 {
		t.Fatalf("one scrape read the CA keys %d times, want once", reads)
	}
	if n := testutil.CollectAndCount(reg, "writ_server_sync_propagation_delay_seconds"); n != 1 {
		t.Fatalf("propagation histogram: %d series", n)
	}
}
