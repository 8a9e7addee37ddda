package entry_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/entry"
)

func TestReservedIDs(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	for _, tc := range []struct {
		in                string
		workload, isAgent bool
	}{
		{in: "spiffe://example.org/web", workload: true},
		{in: "spiffe://example.org/writer", workload: true},
		{in: "spiffe://example.org/ns/writ/agent/a", workload: true},
		{in: "spiffe://example.org/writ"},
		{in: "spiffe://example.org/writ/server"},
		{in: "spiffe://example.org/writ/web"},
		{in: "spiffe://example.org/writ/agent"},
		{in: "spiffe://example.org/writ/agentx/a"},
		{in: "spiffe://example.org/writ/agent/node1", isAgent: true},
		{in: "spiffe://example.org/writ/agent/join_token/3f2a", isAgent: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			_, err := entry.ParseWorkloadID(td, tc.in)
			if (err == nil) != tc.workload {
				t.Errorf("ParseWorkloadID: %v, want ok=%v", err, tc.workload)
			}
			if err != nil && (!errors.Is(err, entry.ErrInvalid) || !strings.Contains(err.Error(), "reserved")) {
				t.Errorf("ParseWorkloadID error %q: want ErrInvalid saying the path is reserved", err)
			}
			_, err = entry.ParseAgentID(td, tc.in)
			if (err == nil) != tc.isAgent {
				t.Errorf("ParseAgentID: %v, want ok=%v", err, tc.isAgent)
			}
			if err != nil && !errors.Is(err, entry.ErrInvalid) {
				t.Errorf("ParseAgentID error %v is not ErrInvalid", err)
			}
			if tc.workload && tc.isAgent {
				t.Fatal("bad case: an ID cannot be both")
			}
		})
	}
	if got := entry.ServerID(td).String(); got != "spiffe://example.org/writ/server" {
		t.Errorf("ServerID = %s", got)
	}
	if !entry.ServerID(spiffeid.TrustDomain{}).IsZero() {
		t.Error("ServerID of the zero trust domain is not zero")
	}
}
