package svidcache

import (
	"slices"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/entry"
)

// applyFederatedLocked applies the foreign bundles of u and reports
// whether any changed.
func (c *Cache) applyFederatedLocked(u Update) bool {
	changed := false
	if u.FederatedFull {
		for td := range c.federated {
			if _, ok := u.Federated[td]; !ok {
				delete(c.federated, td)
				changed = true
			}
		}
	}
	for _, td := range u.RemovedFederated {
		if _, ok := c.federated[td]; ok {
			delete(c.federated, td)
			changed = true
		}
	}
	for td, b := range u.Federated {
		if td == c.td || b == nil || b.TrustDomain() != td {
			continue // never mixed with the local bundle, never under another name
		}
		if old := c.federated[td]; old != nil && old.Equal(b) {
			continue
		}
		if c.federated == nil {
			c.federated = make(map[spiffeid.TrustDomain]*spiffebundle.Bundle)
		}
		c.federated[td] = b
		changed = true
	}
	return changed
}

// federatedLocked returns the foreign bundles the entries g matches
// federate with, ordered by trust domain.
func (c *Cache) federatedLocked(g *group) []*spiffebundle.Bundle {
	if len(c.federated) == 0 {
		return nil
	}
	c.refreshLocked(g)
	var tds []spiffeid.TrustDomain
	for _, it := range g.matched {
		for _, td := range it.federatesWith() {
			if c.federated[td] != nil && !slices.Contains(tds, td) {
				tds = append(tds, td)
			}
		}
	}
	if len(tds) == 0 {
		return nil
	}
	slices.SortFunc(tds, spiffeid.TrustDomain.Compare)
	out := make([]*spiffebundle.Bundle, len(tds))
	for i, td := range tds {
		out[i] = c.federated[td]
	}
	return out
}

// FederatedBundles returns the bundles of the foreign trust domains that
// the entries whose selectors are all among selectors federate with
// (those the cache holds), ordered by trust domain. They are shared and
// must not be modified.
func (c *Cache) FederatedBundles(selectors []entry.Selector) []*spiffebundle.Bundle {
	c.mu.Lock()
	empty := len(c.federated) == 0
	c.mu.Unlock()
	if empty {
		return nil
	}
	sel, key := normalizeSelectors(selectors)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.federatedLocked(c.groupLocked(sel, key))
}

// AllFederatedBundles returns every foreign bundle the cache holds, by
// trust domain. The map is the caller's; the bundles are shared.
func (c *Cache) AllFederatedBundles() map[spiffeid.TrustDomain]*spiffebundle.Bundle {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[spiffeid.TrustDomain]*spiffebundle.Bundle, len(c.federated))
	for td, b := range c.federated {
		out[td] = b
	}
	return out
}
