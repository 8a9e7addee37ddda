package main

import (
	"strings"
	"testing"
)

func TestOnlyUnknownPhase(t *testing.T) {
	var stderr strings.Builder
	if code := runMain(t.Context(), []string{"--only", "x509"}, &stderr); code != 2 {
		t.Fatalf("exit code %d, want 2 (stderr %q)", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), `unknown phase "x509"`) {
		t.Errorf("stderr %q does not name the phase", stderr.String())
	}
}

func TestFanAgentsOdd(t *testing.T) {
	var stderr strings.Builder
	if code := runMain(t.Context(), []string{"--fan-agents", "3"}, &stderr); code != 2 {
		t.Fatalf("exit code %d, want 2 (stderr %q)", code, stderr.String())
	}
}

func TestFanAgents(t *testing.T) {
	cfg := fullConfig()
	cfg.FanAgents = 2000
	if n := pgCountsFor(cfg); n.Agents != 2000 || n.Entries != 10000 {
		t.Errorf("pgCountsFor with FanAgents 2000: %+v", n)
	}
	if n := pgCountsFor(fullConfig()); n.Agents != 10000 {
		t.Errorf("pgCountsFor by default: %d agents, want 10000", n.Agents)
	}
}
