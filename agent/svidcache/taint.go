package svidcache

import (
	"maps"
	"slices"
)

// Taint replaces the set of tainted authorities: X.509 CAs by
// AuthorityID (subject key ID in lowercase hex) and JWT signing keys by
// kid. Such keys may still be in the bundle but must no longer be relied
// on. Taint drops every cached JWT-SVID signed with a tainted key (the
// next FetchJWTSVID signs a new one, and tokens signed with a tainted key
// are not cached), and returns the IDs of the entries whose X.509-SVID a
// tainted CA signed: the caller signs them again at once. Those SVIDs are
// still served until replaced: they verify for as long as their CA is in
// the bundle, and dropping them would leave workloads without any.
func (c *Cache) Taint(x509Authorities, jwtKeyIDs []string) (resign []string) {
	x := toSet(x509Authorities)
	j := toSet(jwtKeyIDs)
	c.mu.Lock()
	defer c.mu.Unlock()
	if !maps.Equal(c.taintedX509, x) {
		// Subscribers that follow the tainted set (TaintedX509Authorities)
		// look again.
		touched := make(map[*group]struct{})
		for _, g := range c.groups {
			if len(g.subs) > 0 {
				touched[g] = struct{}{}
			}
		}
		notify(touched)
	}
	c.taintedX509, c.taintedJWT = x, j
	if len(x) > 0 {
		for _, it := range c.expiry {
			if _, ok := x[it.svid.AuthorityID]; ok {
				resign = append(resign, it.entry.ID)
			}
		}
	}
	if len(j) > 0 {
		for id, byAud := range c.jwts {
			for k, t := range byAud {
				if _, ok := j[t.KeyID]; ok {
					delete(byAud, k)
					c.njwt--
				}
			}
			if len(byAud) == 0 {
				delete(c.jwts, id)
			}
		}
	}
	return resign
}

// TaintedAuthority reports whether the X.509 authority with this ID (see
// X509SVID.AuthorityID) is tainted.
func (c *Cache) TaintedAuthority(authorityID string) bool {
	if authorityID == "" {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.taintedX509[authorityID]
	return ok
}

// TaintedX509Authorities returns the IDs of the tainted X.509 authorities
// (subject key IDs in lowercase hex), sorted. Subscriptions are signalled
// when the set changes.
func (c *Cache) TaintedX509Authorities() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Sorted(maps.Keys(c.taintedX509))
}

func toSet(ids []string) map[string]struct{} {
	if len(ids) == 0 {
		return nil
	}
	m := make(map[string]struct{}, len(ids))
	for _, id := range ids {
		m[id] = struct{}{}
	}
	return m
}
