package svidcache

import (
	"container/heap"
	"container/list"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/entry"

	"writ.dev/writ/internal/logkey"
)

// Defaults and bounds.
const (
	// DefaultMaxJWTSVIDs bounds the JWT-SVIDs the cache keeps when
	// Config.MaxJWTSVIDs is zero.
	DefaultMaxJWTSVIDs = 10000
	// DefaultMaxX509SVIDs bounds the X.509-SVIDs the cache keeps for
	// entries no subscribed workload matches, when Config.MaxX509SVIDs
	// is zero.
	DefaultMaxX509SVIDs = 1000
	// maxMemoGroups bounds the memoized lookups of selector sets nobody
	// subscribes to; past it they are all forgotten.
	maxMemoGroups = 1024
	// maxExpiryWait caps how long Run sleeps between expiry checks, so
	// that a jump of the wall clock is noticed within it.
	maxExpiryWait = time.Minute
)

// Errors callers branch on.
var (
	// ErrUnknownEntry: no entry with that ID is in the cache.
	ErrUnknownEntry = errors.New("svidcache: unknown entry")
	// ErrStale: the SVID's SPIFFE ID or DNS names are not the entry's
	// current ones (the entry changed while it was being signed).
	ErrStale = errors.New("svidcache: SVID does not match the current entry")
	// ErrExpired: the SVID or JWT-SVID is already expired.
	ErrExpired = errors.New("svidcache: SVID expired")
	// ErrUnavailable: a JWT-SVID could not be signed because the server
	// cannot be reached. JWTSigner implementations wrap it.
	ErrUnavailable = errors.New("svidcache: server unavailable")
	// ErrInvalidJWT: the signer returned a token whose claims do not
	// check against the cache's bundle for the entry and audience asked
	// for (jwtsvid.Inspect).
	ErrInvalidJWT = errors.New("svidcache: invalid JWT-SVID from signer")
	// ErrInvalidAudience: the audience is empty or has an empty value.
	ErrInvalidAudience = errors.New("svidcache: invalid audience")
)

// JWTSigner signs JWT-SVIDs on the cache's behalf (the agent, through the
// server). Errors meaning "the server cannot be reached" should wrap
// ErrUnavailable.
type JWTSigner interface {
	SignJWTSVID(ctx context.Context, entryID string, audience []string) (token string, err error)
}

// Config configures a Cache.
type Config struct {
	// TrustDomain is the local trust domain; required.
	TrustDomain spiffeid.TrustDomain
	// Clock decides expiry; defaults to the system clock.
	Clock clock.Clock
	// Logger defaults to discarding.
	Logger *slog.Logger
	// JWTSigner signs JWT-SVIDs that are not cached. Without one,
	// FetchJWTSVID fails with ErrUnavailable.
	JWTSigner JWTSigner
	// MaxJWTSVIDs bounds the cached JWT-SVIDs (DefaultMaxJWTSVIDs if 0).
	MaxJWTSVIDs int
	// MaxX509SVIDs bounds the X.509-SVIDs kept for entries that no
	// subscription matches (DefaultMaxX509SVIDs if 0); past it the least
	// recently used are dropped, to be signed again when a workload asks.
	// SVIDs of entries a subscription matches are always kept.
	MaxX509SVIDs int
}

// Cache holds the node's registration entries, their X.509-SVIDs, cached
// JWT-SVIDs and the trust bundle. It is safe for concurrent use.
type Cache struct {
	td      spiffeid.TrustDomain
	clk     clock.Clock
	log     *slog.Logger
	signer  JWTSigner
	maxJWT  int
	maxX509 int
	kick    chan struct{} // buffered 1: the earliest expiry may have changed
	want    chan struct{} // buffered 1: wanted became non-empty
	issued  chan struct{} // buffered 1: what templates issue may have changed

	mu sync.Mutex // guards every field below
	// items are the entries by ID.
	items map[string]*item
	// byFirst indexes items by their first selector: an entry can match
	// a selector set only if the set holds the entry's first selector.
	// Each value heads a list linked through item.next and item.prev
	// (most hold one item: a slice or a set per selector would cost more
	// than the rest of the index).
	//
	// It is keyed by a hash of the selector (seeded with seed): half the
	// memory of the selector itself on a node with many entries. Items
	// of selectors whose hashes collide share a list; lookups skip those
	// whose first selector is not the one looked for.
	byFirst map[uint64]*item
	seed    maphash.Seed
	// groups are selector sets that were looked up or subscribed to, by
	// selectorKey; groupIdx indexes them by each of their selectors.
	groups   map[string]*group
	groupIdx map[entry.Selector]map[*group]struct{}
	memo     int // groups without subscribers
	subs     int // open subscriptions
	bundle   *spiffebundle.Bundle
	expiry   expiryHeap // items holding an SVID, earliest NotAfter first
	// jwts are cached JWT-SVIDs by SPIFFE ID, then by audienceKey.
	jwts     map[spiffeid.ID]map[string]*JWTSVID
	njwt     int
	jwtCalls map[jwtKey]*jwtCall
	// unmatched holds the items with an SVID that no subscription
	// matches (demand 0), most recently used first.
	unmatched list.List
	// wanted are the IDs of entries a subscription matches that have no
	// SVID, not yet taken by TakeWanted.
	wanted map[string]struct{}
	// node are the agent's node selectors, for node.* template fields.
	node []entry.Selector
	// ninst counts template instances.
	ninst int
	// taintedX509 and taintedJWT are the tainted authorities (see Taint).
	taintedX509, taintedJWT map[string]struct{}
	// federated are the bundles of foreign trust domains that entries
	// federate with (see federated.go).
	federated map[spiffeid.TrustDomain]*spiffebundle.Bundle
	// parts holds the IDs of the entries of a full set applied in
	// parts (Update.More) so far; nil otherwise.
	parts map[string]struct{}
}

// item is one entry in the cache (or a template's instance). A node may
// hold hundreds of thousands of entries, most never signed: an item
// keeps only what the cache matches, signs and serves by (kept), and the
// rarely set rest in x. See TestMemoryPerUnsignedEntry.
type item struct {
	entry kept
	svid  *X509SVID     // nil until signed, and after expiry
	lru   *list.Element // in Cache.unmatched, or nil
	// next and prev link the items of byFirst[entry.Selectors[0]].
	next, prev *item
	heapIdx    int32 // index in Cache.expiry, -1 if absent
	// demand counts the subscribed groups whose matches hold the item.
	demand int32
	// x is nil for a plain entry without DNS names or federated trust
	// domains.
	x *extra
}

// kept is what the cache keeps of every entry.
type kept struct {
	ID          string
	SPIFFEID    spiffeid.ID
	Selectors   []entry.Selector
	X509SVIDTTL time.Duration
	Downstream  bool
}

// extra is what few items need: an entry's rarer fields, and the state
// of a template entry or of an instance.
type extra struct {
	dnsNames      []string
	federatesWith []spiffeid.TrustDomain
	// A template entry's item has full (the entry as given, which
	// instances are filled from), tmpl and insts: it never has an SVID
	// itself; its instances (one per filled SPIFFE ID, by instance ID)
	// do. An instance has parent set and is not in byFirst.
	full   *entry.Entry
	tmpl   *entry.Template
	insts  map[string]*item
	parent *item
	// moreSel are further selector sets of an instance, when callers
	// with different selectors fill the same ID (see touchItemLocked).
	moreSel [][]entry.Selector
}

// newItem returns the item of e, a plain entry or an instance.
func newItem(e *entry.Entry) *item {
	it := &item{heapIdx: -1}
	it.set(e)
	return it
}

// set makes it hold e, a plain entry or an instance; the state of an
// instance is kept.
func (it *item) set(e *entry.Entry) {
	it.entry = kept{ID: e.ID, SPIFFEID: e.SPIFFEID, Selectors: e.Selectors, X509SVIDTTL: e.X509SVIDTTL, Downstream: e.Downstream}
	if x := it.x; x != nil {
		x.dnsNames, x.federatesWith = e.DNSNames, e.FederatesWith
		if x.parent == nil && len(x.dnsNames) == 0 && len(x.federatesWith) == 0 {
			it.x = nil
		}
		return
	}
	if len(e.DNSNames) > 0 || len(e.FederatesWith) > 0 {
		it.x = &extra{dnsNames: e.DNSNames, federatesWith: e.FederatesWith}
	}
}

// ext returns it.x, creating it if needed.
func (it *item) ext() *extra {
	if it.x == nil {
		it.x = &extra{}
	}
	return it.x
}

func (it *item) dnsNames() []string {
	if it.x == nil {
		return nil
	}
	return it.x.dnsNames
}

func (it *item) federatesWith() []spiffeid.TrustDomain {
	if it.x == nil {
		return nil
	}
	return it.x.federatesWith
}

// tmpl returns the template of a template entry's item, nil otherwise.
func (it *item) tmpl() *entry.Template {
	if it.x == nil {
		return nil
	}
	return it.x.tmpl
}

// parent returns the template item of an instance, nil otherwise.
func (it *item) parent() *item {
	if it.x == nil {
		return nil
	}
	return it.x.parent
}

func (it *item) moreSel() [][]entry.Selector {
	if it.x == nil {
		return nil
	}
	return it.x.moreSel
}

// toEntry returns a new entry with what the cache keeps of it.
func (it *item) toEntry() *entry.Entry {
	if it.x != nil && it.x.full != nil {
		return it.x.full
	}
	k := it.entry
	return &entry.Entry{ID: k.ID, SPIFFEID: k.SPIFFEID, Selectors: k.Selectors, X509SVIDTTL: k.X509SVIDTTL,
		Downstream: k.Downstream, DNSNames: it.dnsNames(), FederatesWith: it.federatesWith()}
}

// group is a selector set with its memoized matches and subscribers.
type group struct {
	key       string
	selectors []entry.Selector
	matched   []*item // sorted by SPIFFE ID, then entry ID; valid if fresh
	fresh     bool
	counted   bool // matched items count this group in their demand
	// warned: a template gave this set no identity and it was logged;
	// later refusals are logged at debug level only.
	warned bool
	subs   map[*Subscription]struct{}
}

// New returns an empty cache. Its expiry loop runs in Run.
func New(cfg Config) (*Cache, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("svidcache: trust domain is required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxJWTSVIDs <= 0 {
		cfg.MaxJWTSVIDs = DefaultMaxJWTSVIDs
	}
	if cfg.MaxX509SVIDs <= 0 {
		cfg.MaxX509SVIDs = DefaultMaxX509SVIDs
	}
	return &Cache{
		td:       cfg.TrustDomain,
		clk:      cfg.Clock,
		log:      cfg.Logger,
		signer:   cfg.JWTSigner,
		maxJWT:   cfg.MaxJWTSVIDs,
		maxX509:  cfg.MaxX509SVIDs,
		kick:     make(chan struct{}, 1),
		want:     make(chan struct{}, 1),
		issued:   make(chan struct{}, 1),
		wanted:   make(map[string]struct{}),
		items:    make(map[string]*item),
		byFirst:  make(map[uint64]*item),
		seed:     maphash.MakeSeed(),
		groups:   make(map[string]*group),
		groupIdx: make(map[entry.Selector]map[*group]struct{}),
		jwts:     make(map[spiffeid.ID]map[string]*JWTSVID),
		jwtCalls: make(map[jwtKey]*jwtCall),
	}, nil
}

// TrustDomain returns the local trust domain.
func (c *Cache) TrustDomain() spiffeid.TrustDomain { return c.td }

// Update is one change to the cache, as the node API's Sync delivers it.
type Update struct {
	// Full: Entries is the complete set and replaces the cache's entries;
	// entries not in it are removed with their SVIDs.
	Full bool
	// More, with Full: Entries are one part of the complete set, which
	// continues in the next updates, up to one without More. Each part's
	// entries are upserted at once (reported in Backlog, as those of a
	// full set); entries in none of the parts are removed when the last
	// one is applied. The parts of a set are applied one after the
	// other, with no other update between. A large set applied in parts
	// is never held whole twice, as the caller's parsed entries and as
	// the cache's.
	More bool
	// Entries are created or updated entries, upserted by ID. They must
	// be valid (entry.Entry.Validate) with normalized selectors; the
	// cache keeps them, so the caller must not modify them afterwards.
	Entries []*entry.Entry
	// Deleted are the IDs of removed entries. An ID both here and in
	// Entries is removed.
	Deleted []string
	// Bundle, when not nil, replaces the local trust domain's bundle.
	// The cache keeps it; nobody may modify it afterwards.
	Bundle *spiffebundle.Bundle
	// Federated are bundles of foreign trust domains, added or replacing
	// the ones held; with FederatedFull they replace the whole set.
	// RemovedFederated are trust domains whose bundle is dropped. A
	// bundle of the local trust domain is ignored. The cache keeps the
	// bundles; nobody may modify them afterwards.
	Federated        map[spiffeid.TrustDomain]*spiffebundle.Bundle
	FederatedFull    bool
	RemovedFederated []spiffeid.TrustDomain
}

// Applied tells the producer what Apply changed.
type Applied struct {
	// Sign are the IDs of entries to sign now: entries whose SPIFFE ID,
	// DNS names or X.509-SVID TTL changed while they held an SVID or
	// while a subscription matched them, and entries a subscription
	// matches that have no SVID. When the SPIFFE ID changed or a DNS
	// name was removed, the old SVID is already gone; one whose DNS
	// names the entry still grants is served until the new one is set.
	Sign []string
	// New are the IDs of entries new in an update that is not Full:
	// they come next, while Room is positive.
	New []string
	// Backlog are the IDs of the other entries without an SVID: they
	// are worth signing only while Room is positive, after New ones.
	// Entries a subscription comes to match are reported by Wanted.
	Backlog []string
	// Removed are the IDs of entries that were removed.
	Removed []string
}

// Apply applies u and wakes the subscriptions it concerns.
func (c *Cache) Apply(u Update) Applied {
	c.mu.Lock()
	defer c.mu.Unlock()
	var res Applied
	touched := make(map[*group]struct{})
	if !u.Full {
		c.parts = nil // the parts of a set come one after the other
	}
	if u.Full && (u.More || c.parts != nil) {
		if c.parts == nil {
			c.parts = make(map[string]struct{}, len(u.Entries))
		}
		for _, e := range u.Entries {
			c.parts[e.ID] = struct{}{}
		}
	}
	if u.Full && !u.More {
		keep := c.parts
		c.parts = nil
		if keep == nil {
			keep = make(map[string]struct{}, len(u.Entries))
			for _, e := range u.Entries {
				keep[e.ID] = struct{}{}
			}
		}
		for id, it := range c.items {
			if it.parent() != nil {
				continue // goes with its template
			}
			if _, ok := keep[id]; !ok {
				res.Removed = append(res.Removed, c.removeLocked(it, touched)...)
				res.Removed = append(res.Removed, id)
			}
		}
	}
	for _, e := range u.Entries {
		if it := c.items[e.ID]; it != nil && it.parent() != nil {
			continue // not an entry ID
		}
		sig, gone := c.upsertLocked(e, touched, &res.Sign)
		res.Removed = append(res.Removed, gone...)
		switch sig {
		case signNow:
			res.Sign = append(res.Sign, e.ID)
		case signNew:
			if u.Full {
				res.Backlog = append(res.Backlog, e.ID)
			} else {
				res.New = append(res.New, e.ID)
			}
		case signLater:
			res.Backlog = append(res.Backlog, e.ID)
		}
	}
	for _, id := range u.Deleted {
		if it := c.items[id]; it != nil && it.parent() == nil {
			insts := c.removeLocked(it, touched)
			res.Removed = append(res.Removed, insts...)
			res.Removed = append(res.Removed, id)
			res.Sign = slices.DeleteFunc(res.Sign, func(s string) bool { return s == id })
			if len(insts) > 0 && len(res.Sign) > 0 {
				// Instances of a template updated, then deleted.
				gone := make(map[string]struct{}, len(insts))
				for _, iid := range insts {
					gone[iid] = struct{}{}
				}
				res.Sign = slices.DeleteFunc(res.Sign, func(s string) bool { _, ok := gone[s]; return ok })
			}
			res.New = slices.DeleteFunc(res.New, func(s string) bool { return s == id })
			res.Backlog = slices.DeleteFunc(res.Backlog, func(s string) bool { return s == id })
		}
	}
	bundleChanged := u.Bundle != nil && (c.bundle == nil || !c.bundle.Equal(u.Bundle))
	if bundleChanged {
		c.bundle = u.Bundle
	}
	if c.applyFederatedLocked(u) || bundleChanged {
		for _, g := range c.groups {
			if len(g.subs) > 0 {
				touched[g] = struct{}{}
			}
		}
	}
	notify(touched)
	return res
}

// signing says whether and how soon an upserted entry needs an SVID.
type signing int

const (
	signNone  signing = iota // it has a current SVID
	signNow                  // it changed while held or wanted
	signNew                  // it is new
	signLater                // it has no SVID, and nobody is known to want one
)

// upsertLocked stores e and reports whether it needs a new X.509-SVID,
// and the IDs of the template instances it removed; those of instances
// it updated that need one are appended to sign.
func (c *Cache) upsertLocked(e *entry.Entry, touched map[*group]struct{}, sign *[]string) (signing, []string) {
	it := c.items[e.ID]
	if it != nil && (it.tmpl() != nil || e.Template != "") {
		return c.upsertTemplateLocked(it, e, touched, sign)
	}
	if it == nil {
		if e.Template != "" {
			return c.upsertTemplateLocked(nil, e, touched, sign)
		}
		it = newItem(e)
		c.items[e.ID] = it
		c.indexLocked(it)
		c.touchLocked(e.Selectors, true, touched)
		return signNew, nil
	}
	return c.upsertPlainLocked(it, e, touched), nil
}

// upsertPlainLocked updates it, a plain entry's item, to e.
func (c *Cache) upsertPlainLocked(it *item, e *entry.Entry, touched map[*group]struct{}) signing {
	held := it.svid != nil || it.demand > 0
	old := it.entry
	selChanged := !slices.Equal(old.Selectors, e.Selectors)
	idChanged := old.SPIFFEID != e.SPIFFEID
	dnsChanged := !slices.Equal(it.dnsNames(), e.DNSNames)
	fedChanged := !slices.Equal(it.federatesWith(), e.FederatesWith)
	if selChanged {
		c.unindexLocked(it)
	}
	it.set(e)
	if selChanged {
		c.indexLocked(it)
	}
	if fedChanged || old.Downstream != e.Downstream {
		// The federated bundles its workloads see change, or what they
		// may do with their identity.
		c.touchLocked(e.Selectors, false, touched)
	}
	if selChanged || idChanged {
		// Membership or order of the result sets changes.
		c.touchLocked(old.Selectors, true, touched)
		c.touchLocked(e.Selectors, true, touched)
	}
	if idChanged || dnsChanged {
		// A held SVID is served until its replacement arrives only if
		// the entry still grants all it names (DNS names added or
		// reordered): a workload keeps its identity through the change.
		// One naming what the entry no longer grants goes at once.
		if it.svid != nil && (idChanged || !subset(it.svid.dnsNames, e.DNSNames)) {
			c.dropSVIDLocked(it)
			c.touchLocked(old.Selectors, false, touched)
			c.touchLocked(e.Selectors, false, touched)
		}
		if idChanged {
			c.dropJWTsLocked(old.SPIFFEID)
		}
		if held {
			return signNow
		}
		return signLater
	}
	switch {
	case it.svid != nil && old.X509SVIDTTL != e.X509SVIDTTL, it.svid == nil && it.demand > 0:
		return signNow
	case it.svid == nil:
		return signLater
	}
	return signNone
}

// subset reports whether every name in a is in b.
func subset(a, b []string) bool {
	for _, n := range a {
		if !slices.Contains(b, n) {
			return false
		}
	}
	return true
}

// removeLocked removes it, and its instances if it is a template; it
// returns the instances' IDs.
func (c *Cache) removeLocked(it *item, touched map[*group]struct{}) []string {
	gone := c.dropInstancesLocked(it, touched)
	delete(c.items, it.entry.ID)
	c.unindexLocked(it)
	if it.svid != nil {
		c.dropSVIDLocked(it)
	}
	if it.tmpl() == nil {
		c.dropJWTsLocked(it.entry.SPIFFEID)
	}
	c.touchItemLocked(it, true, touched)
	if p := it.parent(); p != nil {
		delete(p.x.insts, it.entry.ID)
		c.ninst--
		c.issuedLocked()
		if it.demand == 0 {
			delete(c.wanted, it.entry.ID)
		}
	}
	return gone
}

func (c *Cache) indexLocked(it *item) {
	if len(it.entry.Selectors) == 0 || it.parent() != nil {
		return // matches nothing
	}
	s := c.selectorHash(it.entry.Selectors[0])
	head := c.byFirst[s]
	it.prev, it.next = nil, head
	if head != nil {
		head.prev = it
	}
	c.byFirst[s] = it
}

// selectorHash is the key of s in byFirst.
func (c *Cache) selectorHash(s entry.Selector) uint64 {
	return maphash.Comparable(c.seed, s)
}

func (c *Cache) unindexLocked(it *item) {
	if len(it.entry.Selectors) == 0 || it.parent() != nil {
		return
	}
	s := c.selectorHash(it.entry.Selectors[0])
	switch {
	case it.prev != nil:
		it.prev.next = it.next
	case c.byFirst[s] != it:
		panic("svidcache: selector index out of step")
	case it.next == nil:
		delete(c.byFirst, s)
	default:
		c.byFirst[s] = it.next
	}
	if it.next != nil {
		it.next.prev = it.prev
	}
	it.next, it.prev = nil, nil
}

// touchLocked adds to touched the subscribed groups whose selector sets
// hold every selector of sel, marking every such group stale first if
// invalidate is set.
func (c *Cache) touchLocked(sel []entry.Selector, invalidate bool, touched map[*group]struct{}) {
	if len(sel) == 0 {
		return
	}
	for g := range c.groupIdx[sel[0]] {
		if !entry.Match(sel, g.selectors) {
			continue
		}
		if invalidate {
			g.fresh = false
		}
		if len(g.subs) > 0 {
			touched[g] = struct{}{}
		}
	}
}

func notify(touched map[*group]struct{}) {
	for g := range touched {
		for s := range g.subs {
			s.signal()
		}
	}
}

// SetX509SVID stores s as the current X.509-SVID of entry s.EntryID and
// wakes the subscriptions that see it. It fails with ErrUnknownEntry if
// the entry is gone, ErrStale if s's SPIFFE ID or DNS names are not the
// entry's, and ErrExpired if s is already expired.
func (c *Cache) SetX509SVID(s *X509SVID) error {
	return c.SetX509SVIDs([]*X509SVID{s})[0]
}

// SetX509SVIDs stores several X.509-SVIDs as SetX509SVID does, and wakes
// each subscription that sees any of them once, after storing them all:
// a workload is sent one message for a batch, not one per SVID. It
// returns an error (or nil) per SVID, in order.
func (c *Cache) SetX509SVIDs(ss []*X509SVID) []error {
	errs := make([]error, len(ss))
	now := c.clk.Now()
	touched := make(map[*group]struct{})
	c.mu.Lock()
	defer c.mu.Unlock()
	stored := false
	for i, s := range ss {
		if errs[i] = c.setLocked(s, now, touched); errs[i] == nil {
			stored = true
		}
	}
	if stored {
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
	notify(touched)
	return errs
}

func (c *Cache) setLocked(s *X509SVID, now time.Time, touched map[*group]struct{}) error {
	it := c.items[s.EntryID]
	if it == nil {
		return fmt.Errorf("%w: %s", ErrUnknownEntry, s.EntryID)
	}
	if s.ID != it.entry.SPIFFEID || !slices.Equal(s.dnsNames, it.dnsNames()) {
		return fmt.Errorf("%w: entry %s", ErrStale, s.EntryID)
	}
	if s.Expired(now) {
		return fmt.Errorf("%w: entry %s, NotAfter %s", ErrExpired, s.EntryID, s.NotAfter.UTC().Format(time.RFC3339))
	}
	if it.parent() != nil && it.svid == nil {
		c.issuedLocked()
	}
	it.svid = s
	if it.heapIdx >= 0 {
		heap.Fix(&c.expiry, int(it.heapIdx))
	} else {
		heap.Push(&c.expiry, it)
	}
	if it.demand == 0 {
		c.usedLocked(it)
		c.evictLocked()
	}
	select {
	case c.kick <- struct{}{}:
	default:
	}
	c.touchItemLocked(it, false, touched)
	return nil
}

func (c *Cache) dropSVIDLocked(it *item) {
	it.svid = nil
	if it.heapIdx >= 0 {
		heap.Remove(&c.expiry, int(it.heapIdx))
	}
	if it.lru != nil {
		c.unmatched.Remove(it.lru)
		it.lru = nil
	}
}

// Entry returns what the cache keeps of the entry with that ID: its ID,
// SPIFFE ID, selectors, X.509-SVID TTL, DNS names, downstream flag and
// federated trust domains (a template entry: the whole entry). It is
// shared and must not be modified.
func (c *Cache) Entry(entryID string) (*entry.Entry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if it := c.items[entryID]; it != nil {
		return it.toEntry(), true
	}
	return nil, false
}

// Has reports whether the cache holds an entry (or template instance)
// with that ID.
func (c *Cache) Has(entryID string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.items[entryID] != nil
}

// X509SVID returns the current, unexpired X.509-SVID of an entry.
func (c *Cache) X509SVID(entryID string) (*X509SVID, bool) {
	now := c.clk.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	it := c.items[entryID]
	if it == nil || it.svid == nil || it.svid.Expired(now) {
		return nil, false
	}
	if it.lru != nil {
		c.usedLocked(it)
	}
	return it.svid, true
}

// X509SVIDs returns the unexpired X.509-SVIDs of the entries whose
// selectors are all among selectors, ordered by SPIFFE ID, then entry ID.
// selectors need not be sorted. Entries not yet signed are left out. The
// slice is the caller's; the SVIDs are shared and must not be modified.
func (c *Cache) X509SVIDs(selectors []entry.Selector) []*X509SVID {
	sel, key := normalizeSelectors(selectors)
	now := c.clk.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.svidsLocked(c.groupLocked(sel, key), now)
}

// Identity is an entry a workload matches, whether or not its X.509-SVID
// is signed yet.
type Identity struct {
	EntryID string
	ID      spiffeid.ID
	// Downstream is the entry's downstream flag: its workload may obtain
	// a CA of the trust domain.
	Downstream bool
}

// Identities returns the entries whose selectors are all among
// selectors, ordered by SPIFFE ID, then entry ID. The Workload API uses
// it to choose the entries to fetch JWT-SVIDs for.
func (c *Cache) Identities(selectors []entry.Selector) []Identity {
	sel, key := normalizeSelectors(selectors)
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.groupLocked(sel, key)
	c.refreshLocked(g)
	out := make([]Identity, len(g.matched))
	for i, it := range g.matched {
		out[i] = Identity{EntryID: it.entry.ID, ID: it.entry.SPIFFEID, Downstream: it.entry.Downstream}
	}
	return out
}

// Bundle returns the local trust domain's bundle, or nil before the
// first one arrives. It is shared: Clone it before modifying.
func (c *Cache) Bundle() *spiffebundle.Bundle {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bundle
}

// Stats are counts for logs and tests.
type Stats struct {
	Entries       int
	X509SVIDs     int // held, including any expired but not yet dropped
	JWTSVIDs      int
	Subscriptions int
	Groups        int // selector sets memoized or subscribed to
	// UnmatchedX509SVIDs are the X.509-SVIDs held for entries no
	// subscription matches (at most Config.MaxX509SVIDs).
	UnmatchedX509SVIDs int
	// TemplateInstances are the IDs filled from template entries that
	// the cache tracks (counted in Entries too).
	TemplateInstances int
	// SoonestExpiry is the earliest NotAfter of the X.509-SVIDs held
	// (zero if none).
	SoonestExpiry time.Time
}

// Stats returns the cache's current counts.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	var soonest time.Time
	if c.expiry.Len() > 0 {
		soonest = c.expiry[0].svid.NotAfter
	}
	return Stats{
		SoonestExpiry: soonest,
		Entries:       len(c.items),
		X509SVIDs:     c.expiry.Len(),
		JWTSVIDs:      c.njwt,
		Subscriptions: c.subs,
		Groups:        len(c.groups),

		UnmatchedX509SVIDs: c.unmatched.Len(),
		TemplateInstances:  c.ninst,
	}
}

// groupLocked returns the group of a normalized selector set, creating a
// memo group if there is none.
func (c *Cache) groupLocked(sel []entry.Selector, key string) *group {
	if g := c.groups[key]; g != nil {
		return g
	}
	if c.memo >= maxMemoGroups {
		for _, g := range c.groups {
			if len(g.subs) == 0 {
				c.deleteGroupLocked(g)
			}
		}
		// Only subscribed groups are left: instances they do not hold
		// and that have no SVID are referenced by nothing.
		c.collectInstancesLocked()
	}
	g := &group{key: key, selectors: sel}
	c.groups[key] = g
	for _, s := range sel {
		set := c.groupIdx[s]
		if set == nil {
			set = make(map[*group]struct{}, 1)
			c.groupIdx[s] = set
		}
		set[g] = struct{}{}
	}
	c.memo++
	return g
}

func (c *Cache) deleteGroupLocked(g *group) {
	delete(c.groups, g.key)
	for _, s := range g.selectors {
		if set := c.groupIdx[s]; set != nil {
			delete(set, g)
			if len(set) == 0 {
				delete(c.groupIdx, s)
			}
		}
	}
	if len(g.subs) == 0 {
		c.memo--
	}
}

// refreshLocked recomputes g's matches if they are stale. Only the
// entries filed under one of g's selectors are looked at. A subscribed
// group's matches count in their items' demand.
func (c *Cache) refreshLocked(g *group) {
	if g.fresh {
		if !g.counted && len(g.subs) > 0 {
			c.countLocked(g, 1)
		}
		return
	}
	if g.counted {
		c.countLocked(g, -1)
	}
	g.matched = g.matched[:0]
	for _, s := range g.selectors {
		for it := c.byFirst[c.selectorHash(s)]; it != nil; it = it.next {
			if it.entry.Selectors[0] != s || !entry.Match(it.entry.Selectors, g.selectors) {
				continue
			}
			if it.tmpl() != nil {
				if inst := c.instanceLocked(it, g); inst != nil {
					g.matched = append(g.matched, inst)
				}
				continue
			}
			g.matched = append(g.matched, it)
		}
	}
	slices.SortFunc(g.matched, func(a, b *item) int {
		if c := strings.Compare(a.entry.SPIFFEID.String(), b.entry.SPIFFEID.String()); c != 0 {
			return c
		}
		return strings.Compare(a.entry.ID, b.entry.ID)
	})
	if cap(g.matched) > 2*len(g.matched)+8 {
		g.matched = slices.Clip(g.matched)
	}
	g.fresh = true
	if len(g.subs) > 0 {
		c.countLocked(g, 1)
	}
}

func (c *Cache) svidsLocked(g *group, now time.Time) []*X509SVID {
	c.refreshLocked(g)
	out := make([]*X509SVID, 0, len(g.matched))
	for _, it := range g.matched {
		if it.svid != nil && !it.svid.Expired(now) {
			out = append(out, it.svid)
			if it.lru != nil {
				c.usedLocked(it)
			}
		}
	}
	return out
}

// Run drops X.509-SVIDs when they expire, waking their subscribers,
// until ctx ends. Reads never return an expired SVID whether or not Run
// is running; Run frees them and tells subscribers.
func (c *Cache) Run(ctx context.Context) error {
	t := c.clk.NewTimer(maxExpiryWait)
	defer t.Stop()
	for {
		now := c.clk.Now()
		c.mu.Lock()
		next := c.expireLocked(now)
		c.mu.Unlock()
		wait := maxExpiryWait
		if !next.IsZero() {
			wait = min(wait, next.Sub(now))
		}
		t.Stop()
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
		case <-c.kick:
		}
	}
}

// expireLocked drops the SVIDs expired at now and returns the earliest
// NotAfter left (zero if none).
func (c *Cache) expireLocked(now time.Time) time.Time {
	touched := make(map[*group]struct{})
	for c.expiry.Len() > 0 {
		it := c.expiry[0]
		if !it.svid.Expired(now) {
			break
		}
		c.log.Info("X.509-SVID expired; no longer served", logkey.EntryID, it.entry.ID, logkey.SPIFFEID, it.entry.SPIFFEID.String(), "not_after", it.svid.NotAfter)
		c.dropSVIDLocked(it)
		c.touchItemLocked(it, false, touched)
		if it.demand > 0 {
			c.wantLocked(it)
		}
	}
	notify(touched)
	if c.expiry.Len() == 0 {
		return time.Time{}
	}
	return c.expiry[0].svid.NotAfter
}

// normalizeSelectors returns sel sorted and free of duplicates (a copy
// unless it already was) and its key.
func normalizeSelectors(sel []entry.Selector) ([]entry.Selector, string) {
	ok := true
	for i := 1; i < len(sel); i++ {
		if sel[i-1].Compare(sel[i]) >= 0 {
			ok = false
			break
		}
	}
	if !ok {
		sel = slices.Clone(sel)
		slices.SortFunc(sel, entry.Selector.Compare)
		sel = slices.Compact(sel)
	}
	return sel, selectorKey(sel)
}

// selectorKey encodes a normalized selector set unambiguously.
func selectorKey(sel []entry.Selector) string {
	n := 0
	for _, s := range sel {
		n += len(s.Type) + len(s.Value) + 8
	}
	b := make([]byte, 0, n)
	for _, s := range sel {
		b = strconv.AppendInt(b, int64(len(s.Type)), 10)
		b = append(b, ':')
		b = append(b, s.Type...)
		b = strconv.AppendInt(b, int64(len(s.Value)), 10)
		b = append(b, ':')
		b = append(b, s.Value...)
	}
	return string(b)
}

// expiryHeap orders items by their SVID's NotAfter.
type expiryHeap []*item

func (h expiryHeap) Len() int { return len(h) }
func (h expiryHeap) Less(i, j int) bool {
	return h[i].svid.NotAfter.Before(h[j].svid.NotAfter)
}
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = int32(i)
	h[j].heapIdx = int32(j)
}
func (h *expiryHeap) Push(x any) {
	it := x.(*item)
	it.heapIdx = int32(len(*h))
	*h = append(*h, it)
}
func (h *expiryHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	it.heapIdx = -1
	*h = old[:len(old)-1]
	return it
}
