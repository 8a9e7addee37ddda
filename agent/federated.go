package agent

import (
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/agent/svidcache"
	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/entry"

	"writ.dev/writ/internal/logkey"
)

// federatedFromSync parses the foreign bundles of a Sync message into u
// and, when they change what the agent holds, saves the new set with the
// agent's state. A malformed bundle, or one of the local trust domain,
// is logged and skipped: the agent keeps the one it had.
func (a *Agent) federatedFromSync(msg *nodev1.SyncResponse, u *svidcache.Update) {
	u.FederatedFull = msg.GetFull()
	for name, doc := range msg.GetFederatedBundles() {
		td, err := entry.ParseTrustDomain(name)
		if err != nil || td == a.td {
			a.log.Warn("ignoring a federated bundle from the server under an invalid trust domain name", "trust_domain", entry.Printable(truncate(name, 64)))
			continue
		}
		b, err := spiffebundle.Parse(td, doc)
		if err != nil {
			a.log.Warn("ignoring a malformed federated bundle from the server; keeping the current one", "trust_domain", td.Name(), logkey.Error, err)
			if u.FederatedFull {
				// Keep the held one rather than drop it with the full set.
				if held := a.cache.AllFederatedBundles()[td]; held != nil {
					if u.Federated == nil {
						u.Federated = make(map[spiffeid.TrustDomain]*spiffebundle.Bundle)
					}
					u.Federated[td] = held
				}
			}
			continue
		}
		if u.Federated == nil {
			u.Federated = make(map[spiffeid.TrustDomain]*spiffebundle.Bundle)
		}
		u.Federated[td] = b
	}
	for _, name := range msg.GetRemovedFederatedBundles() {
		td, err := entry.ParseTrustDomain(name)
		if err != nil {
			continue
		}
		u.RemovedFederated = append(u.RemovedFederated, td)
	}
	if !u.FederatedFull && len(u.Federated) == 0 && len(u.RemovedFederated) == 0 {
		return
	}
	a.saveFederated(u)
}

// saveFederated saves the set of foreign bundles u leaves, if it differs
// from the saved one.
func (a *Agent) saveFederated(u *svidcache.Update) {
	next := a.cache.AllFederatedBundles()
	if u.FederatedFull {
		next = make(map[spiffeid.TrustDomain]*spiffebundle.Bundle, len(u.Federated))
	}
	for _, td := range u.RemovedFederated {
		delete(next, td)
	}
	for td, b := range u.Federated {
		next[td] = b
	}
	changed, err := a.state.saveFederated(next)
	if err != nil {
		a.log.Error("cannot save the federated bundles", logkey.Error, err)
		return
	}
	if changed {
		names := make([]string, 0, len(next))
		for td := range next {
			names = append(names, td.Name())
		}
		a.log.Info("federated bundles updated", "trust_domains", names)
	}
}
