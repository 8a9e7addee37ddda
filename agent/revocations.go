package agent

import (
	"writ.dev/writ/agent/revocation"
	nodev1 "writ.dev/writ/ca/api/node/v1"

	"writ.dev/writ/internal/logkey"
)

// applyRevocations applies the revocations of a Sync message: a full
// message's replace the list, others add to it. Malformed ones are
// skipped. A changed list is saved with the agent's state, after it is
// in use.
func (a *Agent) applyRevocations(full bool, wire []*nodev1.Revocation) {
	if !full && len(wire) == 0 {
		return
	}
	rs := make([]revocation.Revocation, 0, len(wire))
	skipped := 0
	for _, w := range wire {
		r, err := revocation.FromUnix(w.GetJti(), w.GetClientId(), w.GetRevokedAt(), w.GetExpiresAt())
		if err != nil {
			skipped++
			continue
		}
		rs = append(rs, r)
	}
	if skipped > 0 {
		a.log.Warn("skipping malformed revocations from the server", "count", skipped)
	}
	var changed bool
	if full {
		changed = a.revocations.Replace(rs)
	} else {
		changed = a.revocations.Add(rs)
	}
	if !changed {
		return
	}
	a.log.Debug("revocations synced", "full", full, "received", len(rs), "revocations", a.revocations.Len())
	if err := a.state.saveRevocations(a.revocations.Snapshot()); err != nil {
		a.log.Error("cannot save the revocations", logkey.Error, err)
	}
}
