package agent

import (
	"context"
	"errors"

	"writ.dev/writ/internal/metrics"
)

// Reasons Readiness gives for an agent that is not ready.
var (
	ErrNotSynced     = errors.New("agent: not synced with a server yet")
	ErrNoValidSVID   = errors.New("agent: no valid agent SVID, or the server refused it")
	ErrNoCachedSVIDs = errors.New("agent: no server connection and no valid X.509-SVIDs in the cache")
)

// Readiness reports whether the agent can serve workloads: it holds a
// valid agent SVID the server has not refused, has synced once, and
// either holds a server connection or still has valid X.509-SVIDs in its
// cache (the cache drops SVIDs as they expire), or has no entries at all.
func (a *Agent) Readiness(context.Context) error {
	if !a.Healthy() {
		return ErrNoValidSVID
	}
	select {
	case <-a.ready:
	default:
		return ErrNotSynced
	}
	if a.client.load() != nil {
		return nil
	}
	if st := a.cache.Stats(); st.Entries > 0 && st.X509SVIDs == 0 {
		return ErrNoCachedSVIDs
	}
	return nil
}

// Connected reports whether the agent holds a synced server connection.
func (a *Agent) Connected() bool { return a.client.load() != nil }

// stats feeds the metrics at scrape time.
func (a *Agent) stats() metrics.AgentStats {
	st := a.cache.Stats()
	out := metrics.AgentStats{X509SVIDs: st.X509SVIDs, JWTSVIDs: st.JWTSVIDs, SoonestExpiry: st.SoonestExpiry}
	if s := a.svid.Load(); s != nil {
		out.AgentSVIDExpiry = s.notAfter
	}
	return out
}
