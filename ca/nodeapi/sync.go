package nodeapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/entry"

	"writ.dev/writ/internal/logkey"
)

// Limits on the delta messages Sync sends; a larger change goes out in
// several messages. A full set cannot be split: it is one message.
const (
	maxDeltaEntries = 1000
	maxDeltaBytes   = 1 << 20
)

const msgSVIDExpired = "agent SVID has expired"

// streamState is what one Sync stream has sent. It belongs to the
// stream's goroutine.
type streamState struct {
	// sent maps the ID of each entry the agent has to the revision it
	// was sent at.
	sent map[string]uint64
	// bundleSent is the version of the bundle last sent, bundleSeq its
	// sequence number.
	bundleSent uint64
	bundleSeq  uint64
	// verified is the bundle version the caller's certificate was last
	// verified against.
	verified uint64
	// since is when the oldest change in the messages about to be sent
	// was read from the change feed (zero if none).
	since time.Time
	// revocationsSent is the version of the revocation list last sent.
	revocationsSent uint64
	// fed is what the stream has sent of the foreign bundles.
	fed fedState
}

// maxExpiryWait caps the wait of a Sync stream for its agent
// certificate's expiry, so that a step of the wall clock past it is
// noticed within a minute (timers count monotonic time).
const maxExpiryWait = time.Minute

// Sync sends the caller its entries and the bundle, then every change as
// the index applies it. It ends when the agent is evicted or banned, its
// certificate is rotated away, expires or no longer verifies, or the
// service stops.
func (h *handler) Sync(_ *nodev1.SyncRequest, stream nodev1.NodeService_SyncServer) error {
	s := h.s
	ctx := stream.Context()
	c, err := s.callerFrom(ctx, true)
	if err != nil {
		return err
	}
	sub := s.idx.subscribe(c.id)
	defer s.idx.unsubscribe(sub)
	defer s.reports.streamOpened(c.id)()
	s.metrics.SyncStreamOpened()
	defer s.metrics.SyncStreamClosed()
	expiry := s.clock.NewTimer(min(maxExpiryWait, c.chain[0].NotAfter.Sub(s.clock.Now())))
	defer expiry.Stop()
	// verified starts at zero (bundle versions start at one), so the
	// first round verifies the certificate again: the bundle may have
	// changed since the interceptor did, before the stream subscribed.
	st := &streamState{}
	s.log.LogAttrs(ctx, slog.LevelDebug, "sync stream opened", slog.String(logkey.SPIFFEID, c.id.String()), slog.String(logkey.Serial, c.serial))
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-s.stopping:
			return status.Error(codes.Unavailable, msgStopping)
		case <-expiry.C():
			// The timer fires at least once a minute, and early if the
			// clock was set back; only an expired certificate ends the
			// stream.
			now := s.clock.Now()
			if now.After(c.chain[0].NotAfter) {
				return s.deny(ctx, c.method, c.id, c.serial, "agent SVID expired during the stream", msgSVIDExpired)
			}
			expiry.Reset(min(maxExpiryWait, c.chain[0].NotAfter.Sub(now)+time.Second))
			continue
		case <-sub.notify:
		}
		msgs, err := s.nextMessages(ctx, c, sub, st)
		if err != nil {
			return err
		}
		for i, m := range msgs {
			if err := stream.Send(m); err != nil {
				return err
			}
			var since time.Time
			if i == len(msgs)-1 {
				since = st.since
			}
			s.metrics.SyncSent(since, s.clock.Now())
		}
		if sub.sentSeq.Load() != st.bundleSeq {
			sub.sentSeq.Store(st.bundleSeq)
			s.idx.broadcastSent()
		}
	}
}

// nextMessages checks that the caller is still an agent in good standing
// and returns the messages that bring it up to date.
func (s *Service) nextMessages(ctx context.Context, c *caller, sub *subscriber, st *streamState) ([]*nodev1.SyncResponse, error) {
	b := s.idx.bundle.Load()
	if b.version != st.verified {
		// The bundle changed: a CA the certificate chains to may be gone.
		if _, err := s.verifyPeer(c.chain); err != nil {
			return nil, s.deny(ctx, c.method, c.id, c.serial, "agent SVID no longer verifies: "+err.Error(), msgNotAttested)
		}
		st.verified = b.version
	}

	full, pending, since := sub.take()
	revs := s.idx.revocations.Load()
	st.since = since
	var (
		changed []*entry.Entry
		deleted []string
	)
	s.idx.mu.RLock()
	switch s.idx.certStatusLocked(c.id, c.chain[0]) {
	case agentBanned:
		s.idx.mu.RUnlock()
		return nil, s.deny(ctx, c.method, c.id, c.serial, "agent was banned", msgBanned)
	case agentUnknown:
		s.idx.mu.RUnlock()
		return nil, s.deny(ctx, c.method, c.id, c.serial, "agent was evicted or its SVID rotated away", msgNotAttested)
	case agentStale:
		s.idx.mu.RUnlock()
		return nil, status.Error(codes.Unavailable, msgUnavailable)
	}
	var nodeSelectors []string
	if full {
		changed = make([]*entry.Entry, 0, len(s.idx.byParent[c.id]))
		s.idx.entriesForAgentLocked(c.id, func(e *entry.Entry) { changed = append(changed, e) })
		if a := s.idx.agents[c.id]; a != nil {
			nodeSelectors = selectorStrings(a.Selectors)
		}
	} else {
		for id := range pending {
			if e := s.idx.entries[id]; e != nil && s.idx.forAgentLocked(e, c.id) {
				if rev, ok := st.sent[id]; !ok || rev != e.Revision {
					changed = append(changed, e)
				}
			} else if _, ok := st.sent[id]; ok {
				deleted = append(deleted, id)
			}
		}
	}
	s.idx.mu.RUnlock()

	// Entries are immutable once in the index: convert them unlocked.
	slices.SortFunc(changed, func(a, b *entry.Entry) int { return strings.Compare(a.ID, b.ID) })
	slices.Sort(deleted)
	if full {
		st.sent = make(map[string]uint64, len(changed))
		st.fed.reset()
		msg := &nodev1.SyncResponse{Full: true, Entries: make([]*nodev1.Entry, len(changed)), Bundle: b.json, Tainted: b.tainted, NodeSelectors: nodeSelectors}
		for i, e := range changed {
			msg.Entries[i] = s.entryToWire(e)
			st.sent[e.ID] = e.Revision
			st.fed.entrySent(e)
		}
		fed, _, _ := s.idx.federatedUpdate(&st.fed, true)
		setFederated(msg, fed, nil)
		st.bundleSent, st.bundleSeq = b.version, b.seq
		if revs != nil {
			msg.Revocations = revs.since(0)
			st.revocationsSent = revs.version
		}
		return []*nodev1.SyncResponse{msg}, nil
	}
	revsChanged := revs != nil && revs.version != st.revocationsSent
	for _, e := range changed {
		st.fed.entrySent(e)
	}
	for _, id := range deleted {
		st.fed.entryDeleted(id)
	}
	fed, fedRemoved, fedChanged := s.idx.federatedUpdate(&st.fed, false)
	if len(changed) == 0 && len(deleted) == 0 && b.version == st.bundleSent && !revsChanged && !fedChanged {
		return nil, nil
	}
	var msgs []*nodev1.SyncResponse
	cur := &nodev1.SyncResponse{}
	if revsChanged {
		cur.Revocations = revs.since(st.revocationsSent)
		st.revocationsSent = revs.version
	}
	if b.version != st.bundleSent {
		cur.Bundle = b.json
		cur.Tainted = b.tainted
		st.bundleSent, st.bundleSeq = b.version, b.seq
	}
	size, n := len(cur.Bundle)+setFederated(cur, fed, fedRemoved), 0
	flush := func() {
		msgs = append(msgs, cur)
		cur, size, n = &nodev1.SyncResponse{}, 0, 0
	}
	for _, e := range changed {
		w := s.entryToWire(e)
		sz := proto.Size(w)
		if n > 0 && (n >= maxDeltaEntries || size+sz > maxDeltaBytes) {
			flush()
		}
		cur.Entries = append(cur.Entries, w)
		size += sz
		n++
		st.sent[e.ID] = e.Revision
	}
	for _, id := range deleted {
		if n > 0 && (n >= maxDeltaEntries || size+len(id) > maxDeltaBytes) {
			flush()
		}
		cur.DeletedEntryIds = append(cur.DeletedEntryIds, id)
		size += len(id)
		n++
		delete(st.sent, id)
	}
	flush()
	return msgs, nil
}

// entryToWire converts an entry as the agent sees it: TTLs resolved to
// the server's defaults.
func (s *Service) entryToWire(e *entry.Entry) *nodev1.Entry {
	sel := make([]string, len(e.Selectors))
	for i, x := range e.Selectors {
		sel[i] = x.String()
	}
	return &nodev1.Entry{
		Id:          e.ID,
		SpiffeId:    e.SPIFFEID.String(),
		Selectors:   sel,
		X509SvidTtl: int64(defaultTTL(e.X509SVIDTTL, s.x509TTL) / time.Second),
		JwtSvidTtl:  int64(defaultTTL(e.JWTSVIDTTL, s.jwtTTL) / time.Second),
		DnsNames:    slices.Clone(e.DNSNames),
		Admin:       e.Admin,
		Downstream:  e.Downstream,
		Revision:    e.Revision,
		Template:    e.Template,

		FederatesWith: trustDomainNames(e.FederatesWith),
	}
}

// trustDomainNames returns the names of tds, nil if there are none.
func trustDomainNames(tds []spiffeid.TrustDomain) []string {
	if len(tds) == 0 {
		return nil
	}
	out := make([]string, len(tds))
	for i, td := range tds {
		out[i] = td.Name()
	}
	return out
}

// WaitBundleSent returns once every open Sync stream has been sent a
// bundle with sequence number seq or later (streams that close meanwhile
// no longer count), with the number of streams then open. "Sent" means
// handed to the stream's transport, not applied by the agent: see
// WaitBundleAcked for that.
func (s *Service) WaitBundleSent(ctx context.Context, seq uint64) (int, error) {
	// The index must have read the bundle first (streams only send what
	// it has).
	if err := s.idx.catchUp(ctx); err != nil {
		return 0, err
	}
	for {
		ch := s.idx.sentChan()
		streams, pending := s.idx.bundleSentStatus(seq)
		if pending == 0 {
			return streams, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, fmt.Errorf("%d of %d agent streams have not been sent bundle %d: %w", pending, streams, seq, ctx.Err())
		}
	}
}

// ErrNotAcknowledged is wrapped by WaitBundleAcked's error when ctx ends
// before every agent acknowledged.
var ErrNotAcknowledged = errors.New("nodeapi: bundle not acknowledged by every connected agent")

// NotAcknowledgedError says how many agents had not acknowledged a bundle
// when a wait ended. It wraps ErrNotAcknowledged and the context's error.
type NotAcknowledgedError struct {
	Pending, Streams int
	Sequence         uint64
	Err              error
}

func (e *NotAcknowledgedError) Error() string {
	return fmt.Sprintf("%d of %d agents connected to this server have not acknowledged bundle %d", e.Pending, e.Streams, e.Sequence)
}

func (e *NotAcknowledgedError) Unwrap() []error { return []error{ErrNotAcknowledged, e.Err} }

// WaitBundleAcked returns once the agent of every Sync stream open to
// this server has acknowledged (AckBundle) a bundle with sequence number
// seq or later, with the number of streams then open. Streams that close
// meanwhile no longer count; agents connected to other servers sharing
// the datastore are not seen. If ctx ends first, the error wraps
// ErrNotAcknowledged and ctx's error (a *NotAcknowledgedError).
func (s *Service) WaitBundleAcked(ctx context.Context, seq uint64) (int, error) {
	if err := s.idx.catchUp(ctx); err != nil {
		return 0, err
	}
	for {
		ch := s.idx.sentChan()
		streams, pending := s.idx.bundleAckedStatus(seq)
		if pending == 0 {
			return streams, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, &NotAcknowledgedError{Pending: pending, Streams: streams, Sequence: seq, Err: ctx.Err()}
		}
	}
}

// AckBundle records the bundle sequence number the calling agent has
// applied on its open Sync streams.
func (h *handler) AckBundle(ctx context.Context, req *nodev1.AckBundleRequest) (*nodev1.AckBundleResponse, error) {
	c, err := h.s.callerFrom(ctx, true)
	if err != nil {
		return nil, err
	}
	n := h.s.idx.ack(c.id, req.GetBundleSequence())
	h.s.log.LogAttrs(ctx, slog.LevelDebug, "bundle acknowledged", slog.String(logkey.SPIFFEID, c.id.String()),
		slog.Uint64("bundle_sequence", req.GetBundleSequence()), slog.Int("streams", n))
	return &nodev1.AckBundleResponse{}, nil
}
