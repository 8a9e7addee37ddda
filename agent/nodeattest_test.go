package agent_test

import (
	"log/slog"
	"slices"
	"testing"
	"time"

	"writ.dev/writ/agent"
	"writ.dev/writ/agent/internal/fakenode"
	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/attest/x509pop"
	"writ.dev/writ/internal/nodepki"
)

// TestNodeSelectorsFromSync: the agent exposes the node selectors that
// full Sync messages carry, and replaces them with each full message.
func TestNodeSelectorsFromSync(t *testing.T) {
	e := newEnv(t, fakenode.Options{})
	r := e.start(e.attestConfig())
	e.ready(r)
	if got := r.a.NodeSelectors(); len(got) != 0 {
		t.Fatalf("join token agent has node selectors %q", got)
	}
	want := []string{"x509pop:subject:cn:web1", "x509pop:subject:ou:web"}
	e.srv.Push(&nodev1.SyncResponse{Full: true, Entries: e.srv.Entries(), NodeSelectors: want})
	eventually(t, "node selectors applied", func() bool { return slices.Equal(r.a.NodeSelectors(), want) })
	// A delta message leaves them alone; the next full message replaces them.
	e.srv.Push(&nodev1.SyncResponse{})
	e.srv.Push(&nodev1.SyncResponse{Full: true, Entries: e.srv.Entries(), NodeSelectors: want[:1]})
	eventually(t, "node selectors replaced", func() bool { return slices.Equal(r.a.NodeSelectors(), want[:1]) })
}

// TestJoinTokenOrNodeAttestor: the two exclude each other.
func TestJoinTokenOrNodeAttestor(t *testing.T) {
	e := newEnv(t, fakenode.Options{})
	cfg := e.attestConfig()
	ca := nodepki.NewCA(t, "org CA", time.Now())
	node := ca.Issue(t, nodepki.Node{CN: "web1"}, time.Now())
	att, err := x509pop.NewAgent([][]byte{node.Cert.Raw}, node.Key)
	if err != nil {
		t.Fatal(err)
	}
	cfg.NodeAttestor = att
	if _, err := agent.New(cfg); err == nil {
		t.Fatal("New accepted a join token and a node attestor")
	}
}

// TestAttestRetriedWhenServerBusy: a server that refuses attestations
// for load (ResourceExhausted) is asked again after a backoff, with the
// same join token, instead of the agent giving up.
func TestAttestRetriedWhenServerBusy(t *testing.T) {
	e := newEnv(t, fakenode.Options{})
	e.srv.RefuseAttests(2)
	r := e.start(e.attestConfig())
	e.advanceUntil("attested", agent.ReconnectBackoff.Max, func() bool {
		select {
		case <-r.done:
			t.Fatalf("agent stopped: %v", r.err)
		default:
		}
		return e.srv.Stats().Attests == 3
	})
	e.ready(r)
	if !e.logs.has(slog.LevelWarn, "server busy with other attestations") {
		t.Error("no warning of the busy server")
	}
}
