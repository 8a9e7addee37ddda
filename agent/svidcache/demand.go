package svidcache

// Demand: which X.509-SVIDs the cache keeps, and which it asks for.
//
// An entry that a subscription matches (a connected workload) is in
// demand: its SVID is always kept, and if it has none the entry is
// reported by Wanted so that the agent signs it first. SVIDs of entries
// nobody subscribes to are kept up to Config.MaxX509SVIDs, least
// recently used dropped first; the agent signs such entries only while
// Room is positive.

// countLocked adds d (1 or -1) to the demand of every item g matches.
func (c *Cache) countLocked(g *group, d int32) {
	for _, it := range g.matched {
		c.demandLocked(it, d)
	}
	g.counted = d > 0
}

func (c *Cache) demandLocked(it *item, d int32) {
	before := it.demand
	it.demand += d
	if it.parent() != nil && (before == 0) != (it.demand == 0) {
		c.issuedLocked()
	}
	switch {
	case before == 0 && it.demand > 0:
		if it.lru != nil {
			c.unmatched.Remove(it.lru)
			it.lru = nil
		}
		if it.svid == nil {
			c.wantLocked(it)
		}
	case before > 0 && it.demand == 0:
		if c.items[it.entry.ID] == it {
			delete(c.wanted, it.entry.ID)
		}
		if it.svid != nil {
			c.usedLocked(it)
			c.evictLocked()
		}
	}
}

// wantLocked reports it, a live item without an SVID, by Wanted.
func (c *Cache) wantLocked(it *item) {
	if c.items[it.entry.ID] != it {
		return
	}
	c.wanted[it.entry.ID] = struct{}{}
	select {
	case c.want <- struct{}{}:
	default:
	}
}

// usedLocked makes it, an item with an SVID and no demand, the most
// recently used of the unmatched ones.
func (c *Cache) usedLocked(it *item) {
	if it.lru != nil {
		c.unmatched.MoveToFront(it.lru)
		return
	}
	it.lru = c.unmatched.PushFront(it)
}

// evictLocked drops the least recently used unmatched SVIDs past the
// bound. Nobody subscribes to them, so no one is told.
func (c *Cache) evictLocked() {
	for c.unmatched.Len() > c.maxX509 {
		it := c.unmatched.Back().Value.(*item)
		c.dropSVIDLocked(it)
		if it.parent() != nil && c.items[it.entry.ID] == it {
			// Its callers are gone: forget the instance too. Only memo
			// groups can hold it (no subscription does: its demand is
			// zero); they recompute.
			c.removeLocked(it, make(map[*group]struct{}))
		}
	}
}

// Wanted is signalled when entries a subscription matches have no
// X.509-SVID; TakeWanted returns them. It has a buffer of one and is
// never closed.
func (c *Cache) Wanted() <-chan struct{} { return c.want }

// TakeWanted returns the IDs of the entries that became wanted (a
// subscription matches them and they have no X.509-SVID) since the last
// call, and forgets them.
func (c *Cache) TakeWanted() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.wanted))
	for id := range c.wanted {
		if it := c.items[id]; it != nil && it.svid == nil {
			out = append(out, id)
		}
	}
	clear(c.wanted)
	return out
}

// Room returns how many more X.509-SVIDs of entries no subscription
// matches the cache keeps without dropping others.
func (c *Cache) Room() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return max(0, c.maxX509-c.unmatched.Len())
}

// Holds reports whether the cache keeps an X.509-SVID for the entry, or
// a subscription matches it: whether renewing its SVID is worth it.
func (c *Cache) Holds(entryID string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	it := c.items[entryID]
	return it != nil && (it.svid != nil || it.demand > 0)
}

// Unsigned reports whether the entry exists and has no X.509-SVID.
func (c *Cache) Unsigned(entryID string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	it := c.items[entryID]
	return it != nil && it.svid == nil
}
