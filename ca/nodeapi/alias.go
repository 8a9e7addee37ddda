package nodeapi

import (
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

// Node aliases: an entry whose parent is the server's own ID is a node
// alias. It issues nothing itself; an agent whose node selectors include
// all of the alias's selectors is a member of the alias's SPIFFE ID, and
// entries parented to that ID are the agent's as well as its own.

// aliasIDs returns the alias IDs an agent with these node selectors is a
// member of, sorted and unique. aliases are the entries under the
// server's ID.
func aliasIDs(aliases map[string]*entry.Entry, a *datastore.Agent) []spiffeid.ID {
	if a == nil || len(a.Selectors) == 0 {
		return nil
	}
	var out []spiffeid.ID
	for _, e := range aliases {
		if containsAll(a.Selectors, e.Selectors) {
			out = append(out, e.SPIFFEID)
		}
	}
	slices.SortFunc(out, func(x, y spiffeid.ID) int {
		switch {
		case x.String() < y.String():
			return -1
		case x.String() > y.String():
			return 1
		}
		return 0
	})
	return slices.Compact(out)
}

// containsAll reports whether have (sorted) holds every selector of want
// (non-empty).
func containsAll(have, want []entry.Selector) bool {
	if len(want) == 0 {
		return false
	}
	for _, w := range want {
		if _, ok := slices.BinarySearchFunc(have, w, entry.Selector.Compare); !ok {
			return false
		}
	}
	return true
}

// setAliasesLocked records the alias membership of agent id and reports
// whether it changed. ix.mu must be held for writing.
func (ix *index) setAliasesLocked(id spiffeid.ID) bool {
	next := aliasIDs(ix.byParent[ix.serverID], ix.agents[id])
	prev := ix.aliasesOf[id]
	if slices.Equal(prev, next) {
		return false
	}
	for _, al := range prev {
		if m := ix.membersOf[al]; m != nil {
			delete(m, id)
			if len(m) == 0 {
				delete(ix.membersOf, al)
			}
		}
	}
	if len(next) == 0 {
		delete(ix.aliasesOf, id)
	} else {
		ix.aliasesOf[id] = next
	}
	for _, al := range next {
		m := ix.membersOf[al]
		if m == nil {
			m = make(map[spiffeid.ID]struct{})
			ix.membersOf[al] = m
		}
		m[id] = struct{}{}
	}
	return true
}

// resyncAliasesLocked recomputes every agent's alias membership and asks
// the streams of agents whose membership changed for their full set.
func (ix *index) resyncAliasesLocked(ids func(yield func(spiffeid.ID) bool)) {
	for id := range ids {
		if ix.setAliasesLocked(id) {
			for sub := range ix.subs[id] {
				sub.resync()
			}
		}
	}
}

// allAgentsLocked yields the ID of every agent known now or with an alias
// membership recorded.
func (ix *index) allAgentsLocked(yield func(spiffeid.ID) bool) {
	for id := range ix.agents {
		if !yield(id) {
			return
		}
	}
	for id := range ix.aliasesOf {
		if _, ok := ix.agents[id]; !ok && !yield(id) {
			return
		}
	}
}

// forAgentLocked reports whether e is for agent: parented to it, or to an
// alias it is a member of. ix.mu must be held.
func (ix *index) forAgentLocked(e *entry.Entry, agent spiffeid.ID) bool {
	if e.ParentID == agent {
		return true
	}
	_, ok := ix.membersOf[e.ParentID][agent]
	return ok
}

// agentSelectors returns the node selectors recorded for agent (nil if
// it has no record).
func (ix *index) agentSelectors(agent spiffeid.ID) []entry.Selector {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	if a := ix.agents[agent]; a != nil {
		return a.Selectors
	}
	return nil
}

// entryForAgent returns the entry with this ID if it is for agent, or nil.
func (ix *index) entryForAgent(id string, agent spiffeid.ID) *entry.Entry {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	e := ix.entries[id]
	if e == nil || !ix.forAgentLocked(e, agent) {
		return nil
	}
	return e
}

// entriesForAgentLocked calls fn with every entry for agent.
func (ix *index) entriesForAgentLocked(agent spiffeid.ID, fn func(*entry.Entry)) {
	for _, e := range ix.byParent[agent] {
		fn(e)
	}
	for _, al := range ix.aliasesOf[agent] {
		for _, e := range ix.byParent[al] {
			fn(e)
		}
	}
}
