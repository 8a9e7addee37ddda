package agent_test

import (
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"writ.dev/writ/agent"
	"writ.dev/writ/agent/internal/fakenode"
)

// TestUpgradeFromThreeFileLayout: an agent whose data directory has the
// layout of earlier versions (agent_key.pem, agent_svid.pem,
// bundle.json) starts without a join token, keeps its identity, and
// moves it into agent_state.json.
func TestUpgradeFromThreeFileLayout(t *testing.T) {
	e := newEnv(t, fakenode.Options{})
	w := e.srv.Entry("/web", "unix:uid:1000")
	e.srv.SetEntries(w)
	r := e.start(e.attestConfig())
	e.ready(r)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	before := readAgentCert(t, e.dir)

	// Rewrite the state as an earlier version kept it.
	statePath := filepath.Join(e.dir, agent.StateFile)
	data, err := os.ReadFile(statePath)
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Key    []byte          `json:"key"`
		SVID   [][]byte        `json:"svid"`
		Bundle json.RawMessage `json:"bundle"`
	}
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	var chain []byte
	for _, der := range st.SVID {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	legacy := map[string][]byte{
		"agent_key.pem":  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: st.Key}),
		"agent_svid.pem": chain,
		"bundle.json":    st.Bundle,
	}
	for name, b := range legacy {
		if err := os.WriteFile(filepath.Join(e.dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(statePath); err != nil {
		t.Fatal(err)
	}

	attests := e.srv.Stats().Attests
	r2 := e.start(e.config()) // no join token
	e.ready(r2)
	if r2.a.ID() != e.srv.AgentID() || !r2.a.Healthy() {
		t.Fatalf("after the upgrade: ID %s, healthy %v", r2.a.ID(), r2.a.Healthy())
	}
	if n := e.srv.Stats().Attests; n != attests {
		t.Fatal("the upgraded agent attested again")
	}
	if err := r2.stop(); err != nil {
		t.Fatal(err)
	}
	if after := readAgentCert(t, e.dir); !after.Equal(before) {
		t.Fatal("the SVID changed in the move")
	}
	fi, err := os.Stat(statePath)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v %v", statePath, fi.Mode(), err)
	}
	for name := range legacy {
		if _, err := os.Stat(filepath.Join(e.dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s left behind: %v", name, err)
		}
	}
}
