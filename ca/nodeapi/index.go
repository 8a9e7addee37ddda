package nodeapi

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/keymanager"

	"writ.dev/writ/internal/logkey"
	"writ.dev/writ/internal/metrics"
)

const (
	// eventBatch is how many events the index reads from the store at a
	// time; it holds its lock while applying one batch.
	eventBatch = 1024
	// retryMin and retryMax bound the backoff after a failed store read.
	retryMin = 100 * time.Millisecond
	retryMax = 10 * time.Second
	// maxPending bounds the entry IDs a stream may have pending; beyond
	// it the stream is sent the full set instead.
	maxPending = 4096
)

// errNotLoaded is returned by waits on an index that has not loaded yet.
var errNotLoaded = errors.New("nodeapi: entry index not loaded")

// errStopped is returned by waits on an index that has stopped.
var errStopped = errors.New("nodeapi: stopped")

// bundleState is the local trust bundle as the service uses it. It is
// never modified once published.
type bundleState struct {
	// version counts the changes the index has seen, from 1.
	version uint64
	bundle  *spiffebundle.Bundle
	// json is bundle marshalled (SPIFFE bundle format); nil if the store
	// has no local bundle.
	json []byte
	// roots are the X.509 authorities that verify agent SVIDs.
	roots []*x509.Certificate
	// seq is the bundle's sequence number (0 if none).
	seq uint64
	// tainted are the tainted authorities when the bundle was read (a
	// taint raises the bundle's sequence number). Never modified.
	tainted *nodev1.TaintedAuthorities
	// serverCAs are the CA certificates of the servers' X.509 keys, when
	// the bundle was read, tainted ones left out: the issuers of agent
	// SVIDs. Never modified.
	serverCAs []*x509.Certificate
	// agentIssuers are the CA certificates of every X.509 key of the
	// servers, tainted ones included: the certificate an agent record
	// names must have been signed by one. Never modified.
	agentIssuers []*x509.Certificate
	// peers remembers the client chains verified against roots, and
	// issuers which server CA signed their leaves (the only parts of a
	// bundleState that change after it is published).
	peers   peerCache
	issuers issuerCache
}

// agentStatus is what the index says of an agent certificate.
type agentStatus int

const (
	agentOK agentStatus = iota
	// agentUnknown: no record, or a record for another certificate.
	agentUnknown
	// agentBanned: the record names this certificate but is banned.
	agentBanned
	// agentUnrecorded: the record does not name this certificate, but a
	// Writ server signed it after the record last changed (a renewal
	// the datastore could not record; see unrecorded.go).
	agentUnrecorded
	// agentStale: as agentUnrecorded, but the index has not read the
	// datastore for longer than it may judge such a certificate.
	agentStale
)

// index is the in-memory copy of every entry (by ID and by parent), every
// agent record and the local bundle, kept current by run from the store's
// change feed. Entries and agents in it are never modified: a change
// replaces them.
type index struct {
	store Store
	td    spiffeid.TrustDomain
	clock clock.Clock
	log   *slog.Logger

	// serverID is the parent of node alias entries.
	serverID spiffeid.ID
	// readBound is how long after its last successful read of the
	// datastore the index still accepts unrecorded agent SVIDs and lets
	// RenewAgent sign while the datastore is unavailable: the agent SVID
	// TTL (see unrecorded.go).
	readBound time.Duration
	// lastRead is when (clock time, Unix nanoseconds) the last pass that
	// brought the index up to date with the store began.
	lastRead atomic.Int64

	// parent, if not nil, adds a parent deployment's tainted X.509
	// authorities to the tainted set (read with each new bundle).
	parent ParentTaint

	mu sync.RWMutex // guards loaded, rev, entries, byParent, agents, aliasesOf, membersOf, subs, federated, fedVersion
	// loaded is set once the first snapshot is in.
	loaded   bool
	rev      uint64
	entries  map[string]*entry.Entry
	byParent map[spiffeid.ID]map[string]*entry.Entry
	agents   map[spiffeid.ID]*datastore.Agent
	// aliasesOf are the node alias IDs each agent is a member of (sorted),
	// membersOf the agents of each alias ID (see alias.go).
	aliasesOf map[spiffeid.ID][]spiffeid.ID
	membersOf map[spiffeid.ID]map[spiffeid.ID]struct{}
	// subs are the open Sync streams, by agent.
	subs map[spiffeid.ID]map[*subscriber]struct{}
	// federated are the bundles of foreign trust domains (see
	// federated.go); fedVersion counts their changes.
	federated  map[spiffeid.TrustDomain]*fedBundle
	fedVersion uint64

	// bundle is read without the lock (TLS handshakes); written only by
	// run.
	bundle atomic.Pointer[bundleState]
	// revocations is read without the lock by the streams; written only
	// by run.
	revocations atomic.Pointer[revocationState]

	waitMu sync.Mutex // guards waiters
	// waiters are callers of catchUp waiting for the next pass.
	waiters []chan error
	// kick wakes run for a pass.
	kick chan struct{}
	// done is closed when run returns.
	done chan struct{}

	sentMu sync.Mutex // guards sentCh
	// sentCh is closed and replaced when a stream has sent a new bundle,
	// an agent acknowledged one, or a stream closed (see WaitBundleSent
	// and WaitBundleAcked).
	sentCh chan struct{}
}

func newIndex(store Store, td spiffeid.TrustDomain, clk clock.Clock, log *slog.Logger) *index {
	return &index{
		store:     store,
		td:        td,
		clock:     clk,
		log:       log,
		entries:   make(map[string]*entry.Entry),
		byParent:  make(map[spiffeid.ID]map[string]*entry.Entry),
		agents:    make(map[spiffeid.ID]*datastore.Agent),
		aliasesOf: make(map[spiffeid.ID][]spiffeid.ID),
		membersOf: make(map[spiffeid.ID]map[spiffeid.ID]struct{}),
		subs:      make(map[spiffeid.ID]map[*subscriber]struct{}),
		federated: make(map[spiffeid.TrustDomain]*fedBundle),
		kick:      make(chan struct{}, 1),
		done:      make(chan struct{}),
		sentCh:    make(chan struct{}),
	}
}

// run loads the index and applies the store's events as they are
// committed, until ctx ends. onLoad is called after the first load;
// onPass after every pass (so that the caller can look at anything the
// store does not log as an event, such as CA keys).
func (ix *index) run(ctx context.Context, onLoad, onPass func()) {
	watch, stop := ix.store.Watch()
	defer stop()
	var (
		needLoad = true
		failures int
		retry    clock.Timer
		retryC   <-chan time.Time
	)
	defer func() {
		if retry != nil {
			retry.Stop()
		}
		close(ix.done)
		ix.release(ix.takeWaiters(), ctx.Err())
	}()
	for {
		waiters := ix.takeWaiters()
		began := ix.clock.Now()
		err := ix.pass(ctx, &needLoad, onLoad)
		if err == nil {
			ix.lastRead.Store(began.UnixNano())
		}
		ix.release(waiters, err)
		onPass()
		if err != nil && ctx.Err() == nil {
			failures++
			d := backoff(failures)
			// Log the first failure and then every tenth, not every retry.
			if failures%10 == 1 {
				ix.log.Error("cannot read the datastore's change feed; serving the last known entries and agents", logkey.Error, err.Error(), "retry_in", d.String(), "failures", failures)
			}
			if retry == nil {
				retry = ix.clock.NewTimer(d)
			} else {
				retry.Reset(d)
			}
			retryC = retry.C()
		} else if err == nil {
			if failures > 0 {
				ix.log.Info("datastore change feed recovered", "failures", failures)
				retry.Stop()
			}
			failures = 0
			retryC = nil
		}
		select {
		case <-ctx.Done():
			return
		case <-watch:
		case <-ix.kick:
		case <-retryC:
		}
	}
}

func backoff(failures int) time.Duration {
	d := retryMin
	for i := 1; i < failures && d < retryMax; i++ {
		d *= 2
	}
	return min(d, retryMax)
}

// pass loads the index if needed, then applies every event committed so
// far.
func (ix *index) pass(ctx context.Context, needLoad *bool, onLoad func()) error {
	for attempt := 0; ; attempt++ {
		if *needLoad {
			if err := ix.load(ctx); err != nil {
				return err
			}
			*needLoad = false
			onLoad()
		}
		err := ix.catchUpEvents(ctx)
		if errors.Is(err, datastore.ErrEventsPruned) && attempt < 2 {
			ix.log.Warn("datastore events were pruned before the index read them; reloading the entries and sending every stream its full set")
			*needLoad = true
			continue
		}
		return err
	}
}

// load replaces the index with a snapshot of the store and asks every
// stream to send its full set.
func (ix *index) load(ctx context.Context) error {
	snap, err := ix.store.Snapshot(ctx)
	if err != nil {
		return fmt.Errorf("load entries: %w", err)
	}
	// Agents and the bundle are read after the snapshot; the events that
	// follow it refetch them, so any change in between is applied again,
	// to the same result.
	agents, err := ix.store.ListAgents(ctx)
	if err != nil {
		return fmt.Errorf("load agents: %w", err)
	}
	if err := ix.refreshBundle(ctx); err != nil {
		return err
	}
	if err := ix.refreshRevocations(ctx); err != nil {
		return err
	}
	federated, err := ix.loadFederated(ctx)
	if err != nil {
		return err
	}
	entries := make(map[string]*entry.Entry, len(snap.Entries))
	byParent := make(map[spiffeid.ID]map[string]*entry.Entry)
	var reserved []string
	for _, e := range snap.Entries {
		if entry.IsReserved(e.SPIFFEID) {
			reserved = append(reserved, e.ID)
			continue
		}
		entries[e.ID] = e
		addToParent(byParent, e)
	}
	if len(reserved) > 0 {
		ix.log.Warn("entries with a SPIFFE ID under the reserved path "+entry.ReservedPath+"/ are not issued; delete them and register their workloads under another path",
			"count", len(reserved), logkey.EntryIDs, firstIDs(reserved))
	}
	agentMap := make(map[spiffeid.ID]*datastore.Agent, len(agents))
	var legacy []string
	for _, a := range agents {
		agentMap[a.SPIFFEID] = a
		if !entry.IsAgentID(a.SPIFFEID) && !a.Banned {
			legacy = append(legacy, a.SPIFFEID.String())
		}
	}
	if len(legacy) > 0 {
		ix.log.Warn("agents with a SPIFFE ID outside "+entry.AgentPathPrefix+" may share it with a workload entry; attest them again with a join token for an ID under "+entry.AgentPathPrefix+" and evict the old ones",
			"count", len(legacy), logkey.SPIFFEIDs, firstIDs(legacy))
	}
	ix.mu.Lock()
	ix.entries, ix.byParent, ix.agents = entries, byParent, agentMap
	ix.aliasesOf = make(map[spiffeid.ID][]spiffeid.ID)
	ix.membersOf = make(map[spiffeid.ID]map[spiffeid.ID]struct{})
	for id := range agentMap {
		ix.setAliasesLocked(id)
	}
	ix.setAllFederatedLocked(federated)
	ix.rev = snap.Revision
	ix.loaded = true
	for _, set := range ix.subs {
		for sub := range set {
			sub.resync()
		}
	}
	ix.mu.Unlock()
	ix.log.Info("entry index loaded", "entries", len(entries), "agents", len(agentMap), logkey.Revision, snap.Revision)
	return nil
}

func addToParent(byParent map[spiffeid.ID]map[string]*entry.Entry, e *entry.Entry) {
	m := byParent[e.ParentID]
	if m == nil {
		m = make(map[string]*entry.Entry)
		byParent[e.ParentID] = m
	}
	m[e.ID] = e
}

func removeFromParent(byParent map[spiffeid.ID]map[string]*entry.Entry, e *entry.Entry) {
	m := byParent[e.ParentID]
	delete(m, e.ID)
	if len(m) == 0 {
		delete(byParent, e.ParentID)
	}
}

// catchUpEvents applies the events after the index's revision until there
// are none left.
func (ix *index) catchUpEvents(ctx context.Context) error {
	for {
		ix.mu.RLock()
		after := ix.rev
		ix.mu.RUnlock()
		events, err := ix.store.Events(ctx, after, eventBatch)
		if err != nil {
			return err
		}
		if len(events) == 0 {
			return nil
		}
		if err := ix.apply(ctx, events); err != nil {
			return err
		}
		if len(events) < eventBatch {
			return nil
		}
	}
}

// apply applies one batch of events. Agent and bundle events carry no
// record, so the current records are read first; reading the current
// state rather than the state at the event's revision is harmless, since
// later events converge on it.
func (ix *index) apply(ctx context.Context, events []datastore.Event) error {
	agentIDs := make(map[spiffeid.ID]struct{})
	bundleChanged, revocationsChanged := false, false
	fedTDs := make(map[spiffeid.TrustDomain]struct{})
	for _, ev := range events {
		switch ev.Kind {
		case datastore.EventRevocation:
			revocationsChanged = true
		case datastore.EventAgent:
			id, err := spiffeid.FromString(ev.Key)
			if err != nil {
				ix.log.Warn("ignoring agent event with an invalid SPIFFE ID", logkey.Revision, ev.Revision)
				continue
			}
			agentIDs[id] = struct{}{}
		case datastore.EventBundle:
			if ev.Key == ix.td.Name() {
				bundleChanged = true
			} else if td, err := spiffeid.TrustDomainFromString(ev.Key); err == nil {
				fedTDs[td] = struct{}{}
			}
		}
	}
	agents := make(map[spiffeid.ID]*datastore.Agent, len(agentIDs))
	for id := range agentIDs {
		a, err := ix.store.FetchAgent(ctx, id)
		switch {
		case errors.Is(err, datastore.ErrNotFound):
			agents[id] = nil
		case err != nil:
			return fmt.Errorf("fetch agent %s: %w", id, err)
		default:
			agents[id] = a
		}
	}
	if bundleChanged {
		if err := ix.refreshBundle(ctx); err != nil {
			return err
		}
	}
	if revocationsChanged {
		if err := ix.refreshRevocations(ctx); err != nil {
			return err
		}
	}
	fed, err := ix.fetchFederated(ctx, fedTDs)
	if err != nil {
		return err
	}

	// touched: entry IDs to re-examine, by the parent they were or are
	// under.
	touched := make(map[spiffeid.ID][]string)
	aliasChanged := false
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for _, ev := range events {
		if ev.Kind != datastore.EventEntry {
			continue
		}
		old := ix.entries[ev.Key]
		if old != nil && old.ParentID == ix.serverID || ev.Entry != nil && ev.Entry.ParentID == ix.serverID {
			aliasChanged = true
		}
		if old != nil {
			removeFromParent(ix.byParent, old)
			delete(ix.entries, ev.Key)
			touched[old.ParentID] = append(touched[old.ParentID], ev.Key)
		}
		if e := ev.Entry; e != nil {
			if e.ID != ev.Key {
				ix.log.Warn("ignoring entry event whose entry has another ID", logkey.Revision, ev.Revision)
				continue
			}
			if entry.IsReserved(e.SPIFFEID) {
				ix.log.Warn("entry with a SPIFFE ID under the reserved path "+entry.ReservedPath+"/ is not issued", logkey.EntryID, e.ID, logkey.Revision, ev.Revision)
				continue
			}
			ix.entries[e.ID] = e
			addToParent(ix.byParent, e)
			if old == nil || old.ParentID != e.ParentID {
				touched[e.ParentID] = append(touched[e.ParentID], e.ID)
			}
		}
	}
	for id, a := range agents {
		if a == nil {
			delete(ix.agents, id)
		} else {
			ix.agents[id] = a
		}
	}
	ix.rev = events[len(events)-1].Revision

	// Agents whose alias membership changes get their full set; the
	// others hear of the entries under them or their aliases.
	if aliasChanged {
		ix.resyncAliasesLocked(ix.allAgentsLocked)
	} else {
		ix.resyncAliasesLocked(func(yield func(spiffeid.ID) bool) {
			for id := range agents {
				if !yield(id) {
					return
				}
			}
		})
	}
	now := ix.clock.Now()
	for parent, ids := range touched {
		for sub := range ix.subs[parent] {
			sub.add(ids, now)
		}
		for member := range ix.membersOf[parent] {
			for sub := range ix.subs[member] {
				sub.add(ids, now)
			}
		}
	}
	for id := range agents {
		for sub := range ix.subs[id] {
			sub.poke()
		}
	}
	if ix.setFederatedLocked(fed) {
		bundleChanged = true
	}
	if bundleChanged || revocationsChanged {
		for _, set := range ix.subs {
			for sub := range set {
				sub.poke()
			}
		}
	}
	return nil
}

// refreshBundle reads the local bundle and publishes it if it changed. A
// local bundle that has gone leaves none: nothing verifies until the key
// manager publishes one again.
func (ix *index) refreshBundle(ctx context.Context) error {
	b, err := ix.store.FetchBundle(ctx, ix.td)
	if errors.Is(err, datastore.ErrNotFound) {
		b, err = nil, nil
		ix.log.Error("the datastore has no bundle for the local trust domain; no agent can authenticate until one is published")
	}
	if err != nil {
		return fmt.Errorf("fetch local bundle: %w", err)
	}
	old := ix.bundle.Load()
	if old != nil && (old.bundle == nil && b == nil || old.bundle != nil && b != nil && old.bundle.Equal(b)) {
		return nil
	}
	st := &bundleState{bundle: b, version: 1}
	if old != nil {
		st.version = old.version + 1
	}
	if b != nil {
		if st.json, err = b.Marshal(); err != nil {
			return fmt.Errorf("marshal local bundle: %w", err)
		}
		st.roots = b.X509Authorities()
		st.seq, _ = b.SequenceNumber()
	}
	keys, err := ix.store.ListCAKeys(ctx)
	if err != nil {
		return fmt.Errorf("list CA keys: %w", err)
	}
	st.tainted = ix.taintedAuthorities(keys)
	st.serverCAs, st.agentIssuers = ix.serverCAs(keys)
	ix.bundle.Store(st)
	return nil
}

// catchUp returns once the index has applied every change committed
// before it was called, or the pass that should have failed.
func (ix *index) catchUp(ctx context.Context) error {
	ch := make(chan error, 1)
	ix.waitMu.Lock()
	ix.waiters = append(ix.waiters, ch)
	ix.waitMu.Unlock()
	select {
	case ix.kick <- struct{}{}:
	default:
	}
	select {
	case err := <-ch:
		return err
	case <-ix.done:
		return errStopped
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (ix *index) takeWaiters() []chan error {
	ix.waitMu.Lock()
	defer ix.waitMu.Unlock()
	w := ix.waiters
	ix.waiters = nil
	return w
}

func (ix *index) release(waiters []chan error, err error) {
	if err == nil {
		ix.mu.RLock()
		if !ix.loaded {
			err = errNotLoaded
		}
		ix.mu.RUnlock()
	}
	for _, ch := range waiters {
		ch <- err
	}
}

// entry returns the entry with this ID, or nil.
func (ix *index) entry(id string) *entry.Entry {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	return ix.entries[id]
}

// subscribe registers a stream for the entries of agent. The stream's
// first message is the full set.
func (ix *index) subscribe(agent spiffeid.ID) *subscriber {
	sub := &subscriber{agent: agent, notify: make(chan struct{}, 1), full: true}
	sub.notify <- struct{}{}
	ix.mu.Lock()
	set := ix.subs[agent]
	if set == nil {
		set = make(map[*subscriber]struct{})
		ix.subs[agent] = set
	}
	set[sub] = struct{}{}
	ix.mu.Unlock()
	return sub
}

func (ix *index) unsubscribe(sub *subscriber) {
	ix.mu.Lock()
	set := ix.subs[sub.agent]
	delete(set, sub)
	if len(set) == 0 {
		delete(ix.subs, sub.agent)
	}
	ix.mu.Unlock()
	ix.broadcastSent()
}

// taintedAuthorities returns the tainted keys among keys, and adds the
// X.509 authorities the parent deployment announced tainted.
func (ix *index) taintedAuthorities(keys []*datastore.CAKey) *nodev1.TaintedAuthorities {
	t := &nodev1.TaintedAuthorities{}
	for _, k := range keys {
		if k.State != datastore.CAKeyTainted {
			continue
		}
		id, err := keymanager.DisplayID(k)
		if err != nil {
			ix.log.Warn("CA key record is corrupt; cannot tell agents it is tainted", logkey.KeyID, k.ID, logkey.Error, err.Error())
			continue
		}
		switch k.Kind {
		case datastore.CAKeyX509:
			t.X509AuthorityIds = append(t.X509AuthorityIds, id)
		case datastore.CAKeyJWT:
			t.JwtKeyIds = append(t.JwtKeyIds, id)
		}
	}
	if ix.parent != nil {
		t.X509AuthorityIds = append(t.X509AuthorityIds, ix.parent.ParentTainted()...)
	}
	slices.Sort(t.X509AuthorityIds)
	t.X509AuthorityIds = slices.Compact(t.X509AuthorityIds)
	slices.Sort(t.JwtKeyIds)
	return t
}

// sentChan returns the channel closed when a stream next sends a bundle
// or closes.
func (ix *index) sentChan() <-chan struct{} {
	ix.sentMu.Lock()
	defer ix.sentMu.Unlock()
	return ix.sentCh
}

func (ix *index) broadcastSent() {
	ix.sentMu.Lock()
	close(ix.sentCh)
	ix.sentCh = make(chan struct{})
	ix.sentMu.Unlock()
}

// bundleSentStatus returns the number of open streams and how many of
// them have not been sent a bundle with sequence number seq or later.
func (ix *index) bundleSentStatus(seq uint64) (streams, pending int) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	for _, set := range ix.subs {
		for sub := range set {
			streams++
			if sub.sentSeq.Load() < seq {
				pending++
			}
		}
	}
	return streams, pending
}

// ack records that agent applied the bundle with sequence number seq on
// each of its open streams, and returns how many it has.
func (ix *index) ack(agent spiffeid.ID, seq uint64) int {
	ix.mu.RLock()
	n := 0
	for sub := range ix.subs[agent] {
		n++
		for {
			cur := sub.ackedSeq.Load()
			if cur >= seq || sub.ackedSeq.CompareAndSwap(cur, seq) {
				break
			}
		}
	}
	ix.mu.RUnlock()
	if n > 0 {
		ix.broadcastSent()
	}
	return n
}

// bundleAckedStatus returns the number of open streams and how many of
// them have not acknowledged a bundle with sequence number seq or later.
func (ix *index) bundleAckedStatus(seq uint64) (streams, pending int) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	for _, set := range ix.subs {
		for sub := range set {
			streams++
			if sub.ackedSeq.Load() < seq {
				pending++
			}
		}
	}
	return streams, pending
}

// subscribers returns the number of open streams (for tests).
// stats counts entries, agents and streams for the metrics.
func (ix *index) stats() metrics.NodeStats {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	st := metrics.NodeStats{Entries: len(ix.entries), ConnectedAgents: len(ix.subs)}
	for _, a := range ix.agents {
		if a.Banned {
			st.BannedAgents++
		} else {
			st.AttestedAgents++
		}
	}
	return st
}

func (ix *index) subscribers() int {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	n := 0
	for _, set := range ix.subs {
		n += len(set)
	}
	return n
}

// subscriber is one Sync stream's mailbox. The index records what changed
// and signals notify (buffered one, never blocking); the stream takes the
// changes when it is ready to send.
type subscriber struct {
	agent  spiffeid.ID
	notify chan struct{}
	// sentSeq is the sequence number of the last bundle the stream sent.
	sentSeq atomic.Uint64
	// ackedSeq is the highest bundle sequence number the agent
	// acknowledged (AckBundle) while the stream was open.
	ackedSeq atomic.Uint64

	mu sync.Mutex // guards pending, full, since
	// pending are entry IDs under this agent, now or before, that changed
	// since the stream last looked.
	pending map[string]struct{}
	// since is when the oldest of pending was read from the change feed
	// (zero if none), for the propagation delay metric.
	since time.Time
	// full asks for the full set (first message, reload, or too many
	// pending changes).
	full bool
}

// add records entry IDs that changed, read from the change feed at now,
// and signals the stream.
func (s *subscriber) add(ids []string, now time.Time) {
	s.mu.Lock()
	if s.since.IsZero() {
		s.since = now
	}
	if !s.full {
		if s.pending == nil {
			s.pending = make(map[string]struct{}, len(ids))
		}
		for _, id := range ids {
			s.pending[id] = struct{}{}
		}
		if len(s.pending) > maxPending {
			s.full, s.pending = true, nil
		}
	}
	s.mu.Unlock()
	s.poke()
}

// resync asks for the full set and signals the stream.
func (s *subscriber) resync() {
	s.mu.Lock()
	s.full, s.pending = true, nil
	s.mu.Unlock()
	s.poke()
}

// poke signals the stream without recording a change: it re-checks its
// agent and the bundle.
func (s *subscriber) poke() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// take returns and clears what changed, and when the oldest change was
// read (zero if none).
func (s *subscriber) take() (full bool, pending map[string]struct{}, since time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	full, pending, since = s.full, s.pending, s.since
	s.full, s.pending, s.since = false, nil, time.Time{}
	return full, pending, since
}

// maxLoggedIDs bounds the IDs one log record lists.
const maxLoggedIDs = 100

// firstIDs returns up to maxLoggedIDs of ids for a log record.
func firstIDs(ids []string) []string {
	return ids[:min(len(ids), maxLoggedIDs)]
}
