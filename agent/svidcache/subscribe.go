package svidcache

import (
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"

	"writ.dev/writ/ca/entry"
)

// Subscription follows what one selector set sees: the X.509-SVIDs of the
// entries it matches and the bundle. Its Changed channel has a buffer of
// one and is signalled, without ever blocking the cache, whenever any of
// that may have changed; the subscriber then reads the whole current
// state with State. Several changes before the subscriber reads coalesce
// into one signal, and a slow subscriber delays no one.
type Subscription struct {
	c  *Cache
	g  *group // guarded by c.mu; nil once closed
	ch chan struct{}
}

// Subscribe starts following selectors (they need not be sorted). Nil or
// empty selectors match no entry: such a subscription follows only the
// bundle. Call State for the first state, then again after each signal
// on Changed; Close the subscription when done.
func (c *Cache) Subscribe(selectors []entry.Selector) *Subscription {
	sel, key := normalizeSelectors(selectors)
	s := &Subscription{c: c, ch: make(chan struct{}, 1)}
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.groupLocked(sel, key)
	if g.subs == nil {
		g.subs = make(map[*Subscription]struct{})
	}
	if len(g.subs) == 0 {
		c.memo--
	}
	g.subs[s] = struct{}{}
	s.g = g
	c.subs++
	// Count the group's matches in their demand now, so that entries it
	// matches without an SVID are signed first (see Wanted).
	c.refreshLocked(g)
	return s
}

// Changed is signalled when the state may have changed. It is never
// closed.
func (s *Subscription) Changed() <-chan struct{} { return s.ch }

func (s *Subscription) signal() {
	select {
	case s.ch <- struct{}{}:
	default:
	}
}

// State is what a subscription sees at one instant.
type State struct {
	// X509SVIDs are the unexpired X.509-SVIDs of the matching entries,
	// ordered by SPIFFE ID, then entry ID. The SVIDs are shared and must
	// not be modified.
	X509SVIDs []*X509SVID
	// Bundle is the local trust domain's bundle, nil before the first.
	// It is shared: Clone it before modifying.
	Bundle *spiffebundle.Bundle
	// Federated are the bundles of the foreign trust domains that the
	// matching entries federate with (those the cache holds), ordered by
	// trust domain. They are shared and must not be modified.
	Federated []*spiffebundle.Bundle
}

// State returns the current full state. After Close it returns the zero
// State.
func (s *Subscription) State() State {
	now := s.c.clk.Now()
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	if s.g == nil {
		return State{}
	}
	svids := s.c.svidsLocked(s.g, now)
	return State{X509SVIDs: svids, Bundle: s.c.bundle, Federated: s.c.federatedLocked(s.g)}
}

// Close ends the subscription. It is idempotent. Changed is not closed.
func (s *Subscription) Close() {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	g := s.g
	if g == nil {
		return
	}
	s.g = nil
	delete(g.subs, s)
	s.c.subs--
	if len(g.subs) == 0 {
		// Keep its matches as a memo, within the memo bound.
		s.c.memo++
		if g.counted {
			s.c.countLocked(g, -1)
		}
	}
}
