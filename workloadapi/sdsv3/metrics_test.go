package sdsv3_test

import (
	"context"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"writ.dev/writ/workloadapi/sdsv3"
)

// streamsOpen returns writ_agent_workload_api_streams_open for rpc.
func (e *env) streamsOpen(rpc string) float64 {
	e.t.Helper()
	families, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "writ_agent_workload_api_streams_open" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "rpc" && l.GetValue() == rpc {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return 0
}

// TestSDSStreamsAreCounted: SDS streams show in the agent's metrics as
// writ_agent_workload_api_streams_open{rpc="StreamSecrets"} while open.
func TestSDSStreamsAreCounted(t *testing.T) {
	e := newEnv(t, sdsv3.Config{})
	e.add("/svc/a")
	ctx, cancel := context.WithCancel(ctxTimeout(t))
	s := e.stream(ctx)
	s.send(&discoveryv3.DiscoveryRequest{Node: envoyNode(40), ResourceNames: []string{"default"}})
	s.next()
	if n := e.streamsOpen("StreamSecrets"); n != 1 {
		t.Fatalf("StreamSecrets streams open = %v with one stream, want 1", n)
	}
	cancel()
	deadline := time.Now().Add(10 * time.Second)
	for e.streamsOpen("StreamSecrets") != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the closed SDS stream is still counted")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
