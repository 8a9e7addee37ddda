package svidcache

import (
	"context"
	"log/slog"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/entry"
)

// Template entries.
//
// A template entry's item is indexed like any entry, so that lookups
// find it by its selectors; it never holds an SVID. When a selector set
// matches it, the template is filled from that set (and the agent's node
// selectors) and the set matches the instance of that filled ID: an item
// with an entry of its own (ID entry.InstanceID(template ID, filled ID),
// the template's selectors plus the ones the values came from), which is
// signed, kept, counted and evicted like any other. A set the template
// gives no ID (a missing or invalid value) matches nothing from it, and
// one log line says why, without the value.
//
// Instances live while a subscription holds them or while they keep an
// SVID within the bound on unmatched SVIDs; past it they go with their
// SVID. A change to the template itself, or its removal, removes every
// instance at once: subscribers recompute and get the IDs the new
// template fills. A change to its selectors keeps the instances, and the
// selector sets it matched or now matches are matched again: a caller
// that no longer matches is no longer served its instance, one that
// still does keeps it. A change to what instances carry (DNS names,
// TTLs, federated trust domains, flags) updates them in place as plain
// entries are updated: their SVIDs are signed again, and served
// meanwhile unless they name a DNS name the template no longer gives.

// upsertTemplateLocked stores e, where it (nil if new) or e is a
// template entry; a template never needs signing itself. The IDs of
// instances to sign again are appended to sign.
func (c *Cache) upsertTemplateLocked(it *item, e *entry.Entry, touched map[*group]struct{}, sign *[]string) (signing, []string) {
	var gone []string
	if it != nil {
		if it.tmpl() != nil && it.x.full.Template == e.Template {
			if !slices.Equal(it.entry.Selectors, e.Selectors) {
				gone = c.reselectLocked(it, e.Selectors, touched)
			}
			carried := sameCarried(it.x.full, e)
			it.x.full = e
			if carried {
				return signNone, gone // at most the revision changed
			}
			for _, inst := range it.x.insts {
				if c.updateInstanceLocked(inst, e, touched) == signNow {
					*sign = append(*sign, inst.entry.ID)
				}
			}
			return signNone, gone
		}
		gone = append(c.removeLocked(it, touched), it.entry.ID)
	}
	if e.Template == "" {
		it = newItem(e)
		c.items[e.ID] = it
		c.indexLocked(it)
		c.touchLocked(e.Selectors, true, touched)
		return signNew, gone
	}
	t, err := entry.ParseTemplate(c.td, e.Template)
	if err != nil {
		// Entries are validated before they reach the cache.
		c.log.Error("template entry with an invalid template; ignored", "entry_id", e.ID, "error", err)
		return signNone, gone
	}
	it = &item{heapIdx: -1, entry: kept{ID: e.ID, SPIFFEID: e.SPIFFEID, Selectors: e.Selectors},
		x: &extra{full: e, tmpl: t, insts: make(map[string]*item)}}
	c.items[e.ID] = it
	c.indexLocked(it)
	c.touchLocked(e.Selectors, true, touched)
	return signNone, gone
}

// sameCarried reports whether template entry b gives its instances the
// same fields as a.
func sameCarried(a, b *entry.Entry) bool {
	return slices.Equal(a.DNSNames, b.DNSNames) && a.X509SVIDTTL == b.X509SVIDTTL &&
		a.JWTSVIDTTL == b.JWTSVIDTTL && a.Admin == b.Admin && a.Downstream == b.Downstream &&
		slices.Equal(a.FederatesWith, b.FederatesWith)
}

// reselectLocked gives template item it new selectors. Selector sets
// that matched it, and those that now do, are matched again; each
// instance keeps its ID and SVID, its selectors becoming the new ones
// plus the caller's values it was filled from. It returns the IDs of
// instances it dropped (none but for an instance its own values no longer
// fill, which cannot happen).
func (c *Cache) reselectLocked(it *item, sel []entry.Selector, touched map[*group]struct{}) []string {
	old := it.entry.Selectors
	c.unindexLocked(it)
	it.entry.Selectors = sel
	c.indexLocked(it)
	c.touchLocked(old, true, touched)
	c.touchLocked(sel, true, touched)
	var gone []string
	for iid, inst := range it.x.insts {
		id, used, err := it.x.tmpl.Fill(inst.entry.Selectors, c.node)
		if err != nil || id != inst.entry.SPIFFEID {
			c.removeLocked(inst, touched)
			gone = append(gone, iid)
			continue
		}
		c.touchItemLocked(inst, true, touched)
		inst.entry.Selectors = mergeSelectors(sel, used)
		inst.x.moreSel = nil // matched again, they are found again
	}
	return gone
}

// updateInstanceLocked gives inst what its template entry e now carries
// and reports whether it needs a new X.509-SVID. Its SVID is dropped at
// once only if it names a DNS name e no longer gives.
func (c *Cache) updateInstanceLocked(inst *item, e *entry.Entry, touched map[*group]struct{}) signing {
	held := inst.svid != nil || inst.demand > 0
	dnsChanged := !slices.Equal(inst.dnsNames(), e.DNSNames)
	fedChanged := !slices.Equal(inst.federatesWith(), e.FederatesWith)
	ttlChanged := inst.entry.X509SVIDTTL != e.X509SVIDTTL
	dsChanged := inst.entry.Downstream != e.Downstream
	ie := e.Clone()
	ie.ID, ie.SPIFFEID, ie.Template, ie.Selectors = inst.entry.ID, inst.entry.SPIFFEID, "", inst.entry.Selectors
	inst.set(ie)
	switch {
	case inst.svid != nil && !subset(inst.svid.dnsNames, ie.DNSNames):
		c.dropSVIDLocked(inst)
		c.touchItemLocked(inst, false, touched)
	case fedChanged || dsChanged:
		// The federated bundles its workloads see change, or what they
		// may do with their identity.
		c.touchItemLocked(inst, false, touched)
	}
	switch {
	case held && (dnsChanged || ttlChanged), inst.svid == nil && inst.demand > 0:
		return signNow
	}
	return signNone
}

// dropInstancesLocked removes every instance of it (if it is a
// template) and returns their IDs.
func (c *Cache) dropInstancesLocked(it *item, touched map[*group]struct{}) []string {
	if it.tmpl() == nil || len(it.x.insts) == 0 {
		return nil
	}
	gone := make([]string, 0, len(it.x.insts))
	for id, inst := range it.x.insts {
		c.removeLocked(inst, touched)
		gone = append(gone, id)
	}
	return gone
}

// instanceLocked returns the instance of template item t that group g's
// selector set fills, creating it if needed, or nil if it fills no
// valid ID.
func (c *Cache) instanceLocked(t *item, g *group) *item {
	id, used, err := t.x.tmpl.Fill(g.selectors, c.node)
	if err != nil {
		// The reason names the field, never the value. Once per selector
		// set at warning level, so that a caller reconnecting in a loop
		// does not flood the log.
		level := slog.LevelWarn
		if g.warned {
			level = slog.LevelDebug
		}
		g.warned = true
		c.log.Log(context.Background(), level, "template gives the caller no identity", "entry_id", t.entry.ID, "error", err)
		return nil
	}
	iid := entry.InstanceID(t.entry.ID, id)
	own := mergeSelectors(t.entry.Selectors, used)
	if inst := t.x.insts[iid]; inst != nil {
		if !slices.Equal(inst.entry.Selectors, own) && !slices.ContainsFunc(inst.x.moreSel, func(s []entry.Selector) bool { return slices.Equal(s, own) }) {
			// Another caller fills the same ID from other values (the
			// base filter): it must hear of this instance's SVID too.
			inst.x.moreSel = append(inst.x.moreSel, own)
		}
		return inst
	}
	e := t.x.full.Clone()
	e.ID, e.SPIFFEID, e.Template, e.Selectors = iid, id, "", own
	inst := &item{heapIdx: -1, x: &extra{parent: t}}
	inst.set(e)
	t.x.insts[iid] = inst
	c.items[iid] = inst
	c.ninst++
	return inst
}

// mergeSelectors returns the sorted union of a (sorted) and b.
func mergeSelectors(a, b []entry.Selector) []entry.Selector {
	out := slices.Clone(a)
	for _, s := range b {
		if _, ok := slices.BinarySearchFunc(out, s, entry.Selector.Compare); !ok {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, entry.Selector.Compare)
	return out
}

// touchItemLocked is touchLocked for every selector set that matches it:
// its entry's, and an instance's further ones.
func (c *Cache) touchItemLocked(it *item, invalidate bool, touched map[*group]struct{}) {
	c.touchLocked(it.entry.Selectors, invalidate, touched)
	for _, s := range it.moreSel() {
		c.touchLocked(s, invalidate, touched)
	}
}

// collectInstancesLocked removes the instances no subscription holds and
// that have no SVID, unless a JWT-SVID of theirs is being signed (a
// caller that only fetches JWT-SVIDs is waiting for it). Call it only
// when no memo group is left.
func (c *Cache) collectInstancesLocked() {
	signing := make(map[spiffeid.ID]struct{}, len(c.jwtCalls))
	for k := range c.jwtCalls {
		signing[k.id] = struct{}{}
	}
	for _, it := range c.items {
		if it.tmpl() == nil {
			continue
		}
		for id, inst := range it.x.insts {
			if _, ok := signing[inst.entry.SPIFFEID]; ok {
				continue
			}
			if inst.demand == 0 && inst.svid == nil {
				delete(it.x.insts, id)
				delete(c.items, id)
				delete(c.wanted, id)
				c.dropJWTsLocked(inst.entry.SPIFFEID)
				c.ninst--
			}
		}
	}
}

// SetNodeSelectors sets the agent's node selectors, which fill the
// node.* fields of templates. Instances of templates that use them are
// dropped, to be filled again, if the new selectors fill them another ID
// or none (a changed certificate serial leaves an ID from the subject's
// CN as it was). It returns the IDs of the dropped instances.
func (c *Cache) SetNodeSelectors(sel []entry.Selector) []string {
	sel = slices.Clone(sel)
	slices.SortFunc(sel, entry.Selector.Compare)
	c.mu.Lock()
	defer c.mu.Unlock()
	if slices.Equal(sel, c.node) {
		return nil
	}
	c.node = sel
	touched := make(map[*group]struct{})
	var gone []string
	for _, it := range c.items {
		if it.tmpl() == nil || !it.x.tmpl.UsesNode() {
			continue
		}
		for iid, inst := range it.x.insts {
			// An instance's selectors hold the caller's values it was
			// filled from.
			if id, _, err := it.x.tmpl.Fill(inst.entry.Selectors, sel); err == nil && id == inst.entry.SPIFFEID {
				continue
			}
			c.removeLocked(inst, touched)
			gone = append(gone, iid)
		}
		c.touchLocked(it.entry.Selectors, true, touched)
	}
	notify(touched)
	return gone
}

// TemplateIssued is what one template entry currently issues on this
// agent: the SPIFFE IDs of its instances that a connected workload holds
// or that have an SVID, sorted.
type TemplateIssued struct {
	EntryID   string
	SPIFFEIDs []string
}

// TemplatesIssued returns, for each template entry issuing at least one
// ID, what it issues, ordered by entry ID.
func (c *Cache) TemplatesIssued() []TemplateIssued {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []TemplateIssued
	for id, it := range c.items {
		if it.tmpl() == nil {
			continue
		}
		ti := TemplateIssued{EntryID: id}
		for _, inst := range it.x.insts {
			if inst.demand > 0 || inst.svid != nil {
				ti.SPIFFEIDs = append(ti.SPIFFEIDs, inst.entry.SPIFFEID.String())
			}
		}
		if len(ti.SPIFFEIDs) > 0 {
			slices.Sort(ti.SPIFFEIDs)
			out = append(out, ti)
		}
	}
	slices.SortFunc(out, func(a, b TemplateIssued) int { return strings.Compare(a.EntryID, b.EntryID) })
	return out
}

// IssuedChanged is signalled when what template entries issue
// (TemplatesIssued) may have changed. It has a buffer of one and is
// never closed.
func (c *Cache) IssuedChanged() <-chan struct{} { return c.issued }

func (c *Cache) issuedLocked() {
	select {
	case c.issued <- struct{}{}:
	default:
	}
}
