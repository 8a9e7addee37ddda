package nodeapi_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/internal/metrics"
)

// TestMetrics: join tokens, signatures and the entry and agent gauges
// follow the calls.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t, envOptions{metrics: metrics.NewServer(reg)})
	_, err := e.client(nil).Attest(ctxT(t), &nodev1.AttestRequest{JoinToken: "no-such-token", Csr: newCSR(t, newKey(t))})
	wantCode(t, err, codes.PermissionDenied, "")
	a := e.attest(agentA)
	en := e.createEntry("spiffe://example.org/web", agentA, nil)
	resp, err := a.client.BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{Requests: []*nodev1.X509SVIDRequest{{EntryId: en.ID, Csr: newCSR(t, newKey(t))}}})
	if err != nil || resp.GetResults()[0].GetStatus().GetCode() != int32(codes.OK) {
		t.Fatalf("BatchSignX509SVID: %v %v", resp, err)
	}
	if _, err := a.client.SignJWTSVID(ctxT(t), &nodev1.SignJWTSVIDRequest{EntryId: en.ID, Audience: []string{"db"}}); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP writ_server_join_tokens_total Join tokens presented at attestation, by result: consumed (accepted) or refused (unknown, expired, used).
# TYPE writ_server_join_tokens_total counter
writ_server_join_tokens_total{result="consumed"} 1
writ_server_join_tokens_total{result="refused"} 1
# HELP writ_server_svids_signed_total SVIDs signed, by kind: x509 (workload X.509-SVIDs), jwt (JWT-SVIDs), agent (agent X.509-SVIDs).
# TYPE writ_server_svids_signed_total counter
writ_server_svids_signed_total{kind="agent"} 1
writ_server_svids_signed_total{kind="jwt"} 1
writ_server_svids_signed_total{kind="x509"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "writ_server_join_tokens_total", "writ_server_svids_signed_total"); err != nil {
		t.Fatal(err)
	}
	wantGauges := `
# HELP writ_server_agents Agents by state: connected (with an open Sync stream to this server), attested (recorded and not banned), banned.
# TYPE writ_server_agents gauge
writ_server_agents{state="attested"} 1
writ_server_agents{state="banned"} 0
writ_server_agents{state="connected"} 0
# HELP writ_server_entries Registration entries this server knows (excluding any under the reserved path).
# TYPE writ_server_entries gauge
writ_server_entries 1
`
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := testutil.GatherAndCompare(reg, strings.NewReader(wantGauges), "writ_server_agents", "writ_server_entries")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
