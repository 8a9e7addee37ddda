package integration_test

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"writ.dev/writ/internal/pgtest"
)

// jsonRecords parses a process's JSON log lines.
func jsonRecords(t testing.TB, log string) []map[string]any {
	t.Helper()
	var recs []map[string]any
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		recs = append(recs, r)
	}
	return recs
}

// listenAddress waits for the JSON log record of the listener task and
// returns its address.
func listenAddress(t testing.TB, log *syncBuffer, task string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, r := range jsonRecords(t, log.String()) {
			if r["msg"] == "listening" && r["task"] == task {
				return r["address"].(string)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no %q listening in the log:\n%s", task, tail(log.String(), 20))
	return ""
}

// httpGet is curl: it returns the status code and body.
func httpGet(t testing.TB, url string) (int, string) {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// scrape returns the samples of a /metrics page by series ("name" or
// `name{label="v",...}`).
func scrape(t testing.TB, addr string) map[string]float64 {
	t.Helper()
	code, body := httpGet(t, "http://"+addr+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics on %s: %d %s", addr, code, body)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// waitFor polls cond until it holds, or fails with what it last said.
func waitUntilReason(t testing.TB, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitMetric waits until series on addr satisfies ok.
func waitMetric(t testing.TB, addr, series string, ok func(float64) bool) {
	t.Helper()
	waitUntilReason(t, 20*time.Second, func() (bool, string) {
		v, found := scrape(t, addr)[series]
		return found && ok(v), fmt.Sprintf("%s on %s = %v (present %v)", series, addr, v, found)
	})
}

func waitReady(t testing.TB, addr string, want int, wantBody string) {
	t.Helper()
	waitUntilReason(t, 20*time.Second, func() (bool, string) {
		code, body := httpGet(t, "http://"+addr+"/ready")
		return code == want && strings.Contains(body, wantBody), fmt.Sprintf("GET %s/ready = %d %q, want %d %q", addr, code, body, want, wantBody)
	})
}

// startObservedAgent starts an agent with JSON logs and its metrics and
// health endpoints on ports of its own.
func startObservedAgent(t *testing.T, addr, dataDir, bundlePEM, token string) *agentProc {
	t.Helper()
	p := &agentProc{t: t, log: &syncBuffer{}, dataDir: dataDir, socket: filepath.Join(dataDir+"-public", "api.sock"), done: make(chan struct{})}
	p.cmd = exec.Command(writBin, "agent", "run", "--server-address", addr, "--trust-domain", "example.org", "--data-dir", dataDir,
		"--socket-path", p.socket, "--trust-bundle", bundlePEM, "--log-level", "debug", "--log-format", "json",
		"--metrics-address", "127.0.0.1:0", "--health-address", "127.0.0.1:0")
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.Env = append(cleanEnv(), "WRIT_JOIN_TOKEN="+token)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("agent log (last lines):\n%s", tail(p.log.String(), 40))
		}
	})
	p.waitHealthy(true, 30*time.Second)
	return p
}

// TestIntegrationMetricsHealthAndLogs runs a server and an agent with
// their metrics and health endpoints and JSON logs: the metrics move with
// an entry create and an SVID fetch, readiness follows the agent's server
// connection, the healthcheck commands keep working, and the logs carry
// the IDs requests concern and no secret.
func TestIntegrationMetricsHealthAndLogs(t *testing.T) {
	dir := shortTempDir(t)
	srv := startServer(t, filepath.Join(dir, "server"), "--log-format", "json",
		"--metrics-address", "127.0.0.1:0", "--health-address", "127.0.0.1:0")
	sMetrics := listenAddress(t, srv.log, "metrics endpoint")
	sHealth := listenAddress(t, srv.log, "health endpoint")
	var nodeAddr string
	for _, r := range jsonRecords(t, srv.log.String()) {
		if r["msg"] == "server ready" {
			nodeAddr = r["bind_address"].(string)
		}
	}
	if code, body := httpGet(t, "http://"+sHealth+"/live"); code != http.StatusOK || body != "live\n" {
		t.Fatalf("server /live = %d %q", code, body)
	}
	waitReady(t, sHealth, http.StatusOK, "ready")
	m := scrape(t, sMetrics)
	if m["writ_server_entries"] != 0 || m[`writ_server_ca_keys{kind="x509",state="active"}`] != 1 {
		t.Fatalf("fresh server: entries %v, active X.509 CA keys %v", m["writ_server_entries"], m[`writ_server_ca_keys{kind="x509",state="active"}`])
	}
	if na := m[`writ_server_ca_key_not_after_timestamp_seconds{kind="x509",state="active"}`]; na < float64(time.Now().Add(23*time.Hour).Unix()) {
		t.Fatalf("active CA not after %v: not a day ahead", na)
	}

	bundle := filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(bundle, []byte(srv.admin("bundle", "show")), 0o600); err != nil {
		t.Fatal(err)
	}
	agentID := "spiffe://example.org/writ/agent/obs"
	token := strings.TrimSpace(srv.admin("token", "generate", "--spiffe-id", agentID))
	ag := startObservedAgent(t, nodeAddr, filepath.Join(dir, "agent"), bundle, token)
	aMetrics := listenAddress(t, ag.log, "metrics endpoint")
	aHealth := listenAddress(t, ag.log, "health endpoint")
	waitReady(t, aHealth, http.StatusOK, "ready")
	waitMetric(t, aMetrics, "writ_agent_server_connected", func(v float64) bool { return v == 1 })
	waitMetric(t, sMetrics, `writ_server_agents{state="connected"}`, func(v float64) bool { return v == 1 })
	m = scrape(t, sMetrics)
	if m[`writ_server_join_tokens_total{result="consumed"}`] != 1 || m[`writ_server_svids_signed_total{kind="agent"}`] < 1 || m["writ_server_sync_streams_open"] != 1 {
		t.Fatalf("after attestation: tokens consumed %v, agent SVIDs %v, streams %v", m[`writ_server_join_tokens_total{result="consumed"}`], m[`writ_server_svids_signed_total{kind="agent"}`], m["writ_server_sync_streams_open"])
	}

	// An entry: the server counts it, signs its SVID, pushes it; the agent
	// caches it and serves it.
	workloadID := "spiffe://example.org/obs/workload"
	entryID := strings.TrimSpace(srv.admin("entry", "create", "--spiffe-id", workloadID, "--parent-id", agentID, "--selector", uidSelector))
	waitMetric(t, sMetrics, "writ_server_entries", func(v float64) bool { return v == 1 })
	waitMetric(t, sMetrics, `writ_server_svids_signed_total{kind="x509"}`, func(v float64) bool { return v >= 1 })
	waitMetric(t, sMetrics, "writ_server_sync_propagation_delay_seconds_count", func(v float64) bool { return v >= 1 })
	waitMetric(t, sMetrics, `writ_server_admin_calls_total{code="OK",method="/writ.admin.v1.EntryService/BatchCreateEntry"}`, func(v float64) bool { return v == 1 })
	waitMetric(t, aMetrics, `writ_agent_svids_cached{kind="x509"}`, func(v float64) bool { return v == 1 })
	waitMetric(t, aMetrics, "writ_agent_svid_rotations_total", func(v float64) bool { return v >= 1 })
	if v := scrape(t, aMetrics)["writ_agent_svid_soonest_expiry_timestamp_seconds"]; v < float64(time.Now().Unix()) {
		t.Fatalf("soonest SVID expiry %v is not in the future", v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	svid, err := workloadapi.FetchX509SVID(ctx, socketAddr(ag))
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID.String() != workloadID {
		t.Fatalf("fetched %s, want %s", svid.ID, workloadID)
	}
	waitMetric(t, aMetrics, `writ_agent_workload_api_calls_total{code="Canceled",rpc="FetchX509SVID"}`, func(v float64) bool { return v >= 1 })
	if n := scrape(t, aMetrics)["writ_agent_workload_attestation_duration_seconds_count"]; n < 1 {
		t.Fatalf("no workload attestation timed: %v", n)
	}

	// The healthcheck commands work beside the HTTP endpoints.
	if _, errOut, code := runWrit(t, nil, "server", "healthcheck", "--admin-socket", srv.socket); code != 0 {
		t.Fatalf("server healthcheck: exit %d %s", code, errOut)
	}
	if !ag.healthy() {
		t.Fatal("agent healthcheck fails")
	}

	// The server goes away: the agent loses its connection but stays
	// ready, serving its cached SVID within its lifetime.
	srv.stop()
	waitMetric(t, aMetrics, "writ_agent_server_connected", func(v float64) bool { return v == 0 })
	waitReady(t, aHealth, http.StatusOK, "ready")
	if code, _ := httpGet(t, "http://"+sHealth+"/ready"); code != 0 {
		t.Fatalf("stopped server still answers /ready: %d", code)
	}
	ag.stop()

	// The logs: no join token, no key or PEM material; request records
	// name what they concern.
	key, err := x509.MarshalPKCS8PrivateKey(svid.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{
		"join token":               token,
		"PEM":                      "-----BEGIN",
		"workload key (base64)":    base64.StdEncoding.EncodeToString(key)[:40],
		"workload key (hex)":       hex.EncodeToString(key)[:40],
		"workload cert (base64)":   base64.StdEncoding.EncodeToString(svid.Certificates[0].Raw)[:40],
		"PRIVATE KEY in any words": "PRIVATE KEY",
	}
	for who, log := range map[string]string{"server": srv.log.String(), "agent": ag.log.String()} {
		for what, s := range secrets {
			if strings.Contains(log, s) {
				t.Errorf("%s log contains the %s", who, what)
			}
		}
		for _, r := range jsonRecords(t, log) {
			msg, _ := r["msg"].(string)
			// Each of these records names at least one of its keys.
			anyOf := map[string][]string{
				"agent attested":          {"spiffe_id"},
				"admin mutation":          {"entry_id", "spiffe_id"},
				"X.509-SVIDs signed":      {"spiffe_id", "entry_ids"},
				"sync stream opened":      {"spiffe_id"},
				"agent started":           {"spiffe_id"},
				"connected to the server": {"server_address"},
			}[msg]
			named := len(anyOf) == 0
			for _, k := range anyOf {
				if v, ok := r[k]; ok && v != "" && v != nil {
					named = true
				}
			}
			if !named {
				t.Errorf("%s log record %q names none of %v: %v", who, msg, anyOf, r)
			}
		}
	}
	if !strings.Contains(srv.log.String(), entryID) {
		t.Errorf("server log never names entry %s", entryID)
	}
}

// TestIntegrationServerReadyFollowsDatastore: a server on PostgreSQL is
// not ready while its database is down, and ready again once it is back.
func TestIntegrationServerReadyFollowsDatastore(t *testing.T) {
	pg := pgtest.New(t)
	kv := map[string]string{}
	for _, f := range strings.Fields(pg.NewDatabase(t)) {
		k, v, _ := strings.Cut(f, "=")
		kv[k] = v
	}
	dsn := (&url.URL{Scheme: "postgres", User: url.User(kv["user"]), Path: "/" + kv["dbname"],
		RawQuery: url.Values{"host": {kv["host"]}, "port": {kv["port"]}, "sslmode": {"disable"}}.Encode()}).String()
	dir := shortTempDir(t)
	srv := startServer(t, filepath.Join(dir, "server"), "--log-format", "json", "--datastore", dsn, "--health-address", "127.0.0.1:0")
	health := listenAddress(t, srv.log, "health endpoint")
	waitReady(t, health, http.StatusOK, "ready")
	pg.Stop(t)
	waitReady(t, health, http.StatusServiceUnavailable, "datastore unavailable")
	if code, body := httpGet(t, "http://"+health+"/live"); code != http.StatusOK {
		t.Fatalf("/live during the outage = %d %q", code, body)
	}
	pg.Start(t)
	waitReady(t, health, http.StatusOK, "ready")
}

// TestIntegrationAgentReadyWaitsForServer: an agent whose server is down
// answers /live but not /ready while it tries to attest, and becomes
// ready once the server is back.
func TestIntegrationAgentReadyWaitsForServer(t *testing.T) {
	dir := shortTempDir(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nodeAddr := lis.Addr().String()
	lis.Close()
	serverDir := filepath.Join(dir, "server")
	srv := startServer(t, serverDir, "--bind-address", nodeAddr)
	bundle := filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(bundle, []byte(srv.admin("bundle", "show")), 0o600); err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(srv.admin("token", "generate", "--spiffe-id", "spiffe://example.org/writ/agent/late"))
	srv.stop()

	p := &agentProc{t: t, log: &syncBuffer{}, dataDir: filepath.Join(dir, "agent"), done: make(chan struct{})}
	p.socket = filepath.Join(dir, "agent-public", "api.sock")
	p.cmd = exec.Command(writBin, "agent", "run", "--server-address", nodeAddr, "--trust-domain", "example.org", "--data-dir", p.dataDir,
		"--socket-path", p.socket, "--trust-bundle", bundle, "--log-format", "json", "--health-address", "127.0.0.1:0")
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.Env = append(cleanEnv(), "WRIT_JOIN_TOKEN="+token)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("agent log (last lines):\n%s", tail(p.log.String(), 40))
		}
	})
	health := listenAddress(t, p.log, "health endpoint")
	if code, _ := httpGet(t, "http://"+health+"/live"); code != http.StatusOK {
		t.Fatalf("/live while attesting = %d", code)
	}
	waitReady(t, health, http.StatusServiceUnavailable, "no valid agent SVID")

	startServer(t, serverDir, "--bind-address", nodeAddr)
	waitReady(t, health, http.StatusOK, "ready")
}
