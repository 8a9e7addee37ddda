package agent

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/agent/jwtbatch"
	"writ.dev/writ/agent/nodeclient"
	"writ.dev/writ/agent/rotate"
	"writ.dev/writ/agent/svidcache"
	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/x509ca"

	"writ.dev/writ/internal/logkey"
)

// errRenewed ends a session after the agent SVID was renewed, so that the
// next connection presents the new certificate.
var errRenewed = errors.New("agent SVID renewed; reconnecting")

// errTaintedIssuer: an SVID was stored but a tainted CA signed it.
var errTaintedIssuer = errors.New("signed by a tainted CA")

var errNoFirstMessage = errors.New("no first Sync message from the server in time")

// session runs one connection: renew the agent SVID if due, open Sync,
// apply its messages, sign what is pending and renew on time. healthy
// reports whether it got as far as the first full Sync message.
func (a *Agent) session(ctx context.Context, addr string) (healthy bool, err error) {
	c, err := nodeclient.New(nodeclient.Config{
		Address:     addr,
		TrustDomain: a.td,
		Authorities: a.authorities,
		Certificate: &a.cert,
		Clock:       a.clk,
	})
	if err != nil {
		a.client.end(nil, false)
		return false, err
	}
	defer c.Close()
	// Before c is closed: calls borrowing it fail from then on, and
	// wait for the next session if this one ends to present a renewed
	// SVID.
	defer func() { a.client.end(c, errors.Is(err, errRenewed) && ctx.Err() == nil) }()

	if a.renewDue(a.svid.Load(), a.clk.Now()) {
		if err := a.renew(ctx, c); err != nil {
			return false, err
		}
		return false, errRenewed
	}

	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stream, err := c.Sync(sctx)
	if err != nil {
		return false, err
	}
	stopFirst := clock.AfterFunc(a.clk, firstSyncTimeout, func() { cancel(errNoFirstMessage) })
	msg, err := stream.Recv()
	stopFirst()
	if err != nil {
		return false, causeOr(sctx, err)
	}
	if !msg.GetFull() {
		return false, fmt.Errorf("%w: first Sync message is not a full one", nodeclient.ErrProtocol)
	}
	if a.revoked.Swap(false) {
		a.log.Info("the server accepts the agent again", logkey.ServerAddress, addr)
	}
	if a.connectedTo != addr {
		a.log.Info("connected to the server", logkey.ServerAddress, addr)
		if a.connectedTo != "" {
			a.metrics.Failover()
		}
		a.connectedTo = addr
	}
	acks := make(chan uint64, 1)
	a.applySync(msg, acks)
	a.client.set(c)
	a.metrics.Connected(true)
	defer a.metrics.Connected(false)

	var wg sync.WaitGroup
	wg.Go(func() { a.ackLoop(sctx, c, acks) })
	wg.Go(func() {
		if err := a.signLoop(sctx, c); err != nil {
			cancel(err)
		}
	})
	wg.Go(func() {
		if err := a.renewLoop(sctx, c); err != nil {
			cancel(err)
		}
	})
	wg.Go(func() { a.reportTemplates(sctx, c) })
	for {
		msg, err = stream.Recv()
		if err != nil {
			break
		}
		a.applySync(msg, acks)
	}
	err = causeOr(sctx, err)
	cancel(err)
	wg.Wait()
	return true, err
}

// causeOr returns why ctx was cancelled, if it was, else err.
func causeOr(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return err
}

// fullPart is how many entries of a full Sync message are parsed and
// applied at a time.
const fullPart = 4096

// applySync parses a Sync message with the ca/entry parsers and applies
// it to the cache; malformed entries are logged and skipped (and an
// earlier version of one is dropped). Once a bundle is applied, its
// sequence number goes to acks (buffered one, latest wins).
//
// A large full set is parsed and applied fullPart entries at a time
// (svidcache.Update.More), and each wire entry is dropped from msg once
// parsed: the agent never holds the whole set both as wire entries and
// as parsed ones besides what the cache keeps.
func (a *Agent) applySync(msg *nodev1.SyncResponse, acks chan uint64) {
	parent := a.ID()
	full := msg.GetFull()
	if full {
		a.setNodeSelectors(msg.GetNodeSelectors())
	}
	wire := msg.GetEntries()
	first := true
	for full && len(wire) > fullPart {
		u := svidcache.Update{Full: true, More: true}
		a.parseEntries(&u, parent, wire[:fullPart])
		wire = wire[fullPart:]
		a.schedule(first, u, a.cache.Apply(u))
		first = false
	}
	u := svidcache.Update{Full: full}
	a.parseEntries(&u, parent, wire)
	for _, id := range msg.GetDeletedEntryIds() {
		if _, err := entry.ParseEntryID(id); err != nil {
			a.log.Warn("skipping malformed deleted entry ID from the server", logkey.EntryID, entry.Printable(truncate(id, 64)))
			continue
		}
		u.Deleted = append(u.Deleted, id)
	}
	var tainted *nodev1.TaintedAuthorities
	if raw := msg.GetBundle(); len(raw) > 0 {
		if b := a.parseBundle(raw); b != nil {
			u.Bundle = b
			// The tainted set comes with every bundle and replaces
			// the last one.
			tainted = msg.GetTainted()
			if tainted == nil {
				tainted = &nodev1.TaintedAuthorities{}
			}
		}
	}
	a.federatedFromSync(msg, &u)
	res := a.cache.Apply(u)
	a.applyRevocations(u.Full, msg.GetRevocations())
	if tainted != nil {
		a.applyTaint(tainted)
	}
	if u.Bundle != nil && acks != nil {
		if seq, ok := u.Bundle.SequenceNumber(); ok {
			select {
			case <-acks:
			default:
			}
			acks <- seq
		}
	}
	a.schedule(u.Full && first, u, res)
}

// parseEntries parses wire entries into u, setting each to nil once
// parsed.
func (a *Agent) parseEntries(u *svidcache.Update, parent spiffeid.ID, wire []*nodev1.Entry) {
	for i, w := range wire {
		wire[i] = nil
		e, err := parseEntry(a.td, parent, w)
		if err != nil {
			id, idErr := entry.ParseEntryID(w.GetId())
			a.log.Warn("skipping malformed entry from the server", logkey.EntryID, entry.Printable(truncate(w.GetId(), 64)), logkey.Error, err)
			if idErr == nil && !u.Full {
				u.Deleted = append(u.Deleted, id)
			}
			continue
		}
		u.Entries = append(u.Entries, e)
	}
}

// schedule hands what an update changed to the scheduler; newSet: u
// starts a full set, whose backlog replaces the scheduler's.
func (a *Agent) schedule(newSet bool, u svidcache.Update, res svidcache.Applied) {
	a.sched.remove(res.Removed...)
	a.sched.enqueue(res.Sign...)
	a.sched.addFresh(res.New...)
	a.sched.addBacklog(newSet, res.Backlog)
	if len(res.Sign) > 0 || len(res.Removed) > 0 || len(res.New) > 0 || len(res.Backlog) > 0 {
		a.log.Debug("entries synced", "full", u.Full, "to_sign", len(res.Sign), "new", len(res.New), "backlog", len(res.Backlog), "removed", len(res.Removed), "more", u.More)
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// parseBundle parses a bundle from the server and, if it changed, makes it
// the one the server is authenticated with and saves it. It returns nil
// (keeping the current bundle) if the bundle is malformed.
func (a *Agent) parseBundle(raw []byte) *spiffebundle.Bundle {
	b, err := spiffebundle.Parse(a.td, raw)
	if err == nil && len(b.X509Authorities()) == 0 {
		err = errors.New("no X.509 authorities")
	}
	if err != nil {
		a.log.Warn("ignoring malformed bundle from the server; keeping the current one", logkey.Error, err)
		return nil
	}
	if cur := a.bundle.Load(); cur != nil && cur.Equal(b) {
		return b
	}
	a.bundle.Store(b)
	if err := a.state.saveBundle(b); err != nil {
		a.log.Error("cannot save the bundle", logkey.Error, err)
	} else {
		seq, _ := b.SequenceNumber()
		a.log.Info("trust bundle updated", "x509_authorities", len(b.X509Authorities()), "jwt_authorities", len(b.JWTAuthorities()), "sequence", seq)
	}
	return b
}

// signLoop signs pending entries in batches while the session lasts: it
// takes everything pending (up to MaxBatch) at once, so entries that
// arrive together are signed together, and entries that arrive during a
// call go in the next one.
func (a *Agent) signLoop(ctx context.Context, c *nodeclient.Client) error {
	for {
		ids := a.sched.take(MaxBatch, a.cache.Room())
		if len(ids) == 0 {
			a.markReady()
			if a.agentSVIDTainted() {
				// Workload SVIDs first: once renewed, the agent's old
				// certificate, which this session uses, is refused.
				return a.renewTainted(ctx, c)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-a.sched.wake:
				continue
			}
		}
		if err := a.signBatch(ctx, c, ids); err != nil {
			a.sched.requeue(ids)
			return err
		}
	}
}

type pendingSign struct {
	id  string
	key crypto.Signer
}

// signBatch asks for the SVIDs of ids in one call. Per-entry refusals are
// retried later with backoff; a failed call is returned.
func (a *Agent) signBatch(ctx context.Context, c *nodeclient.Client, ids []string) error {
	reqs := make([]nodeclient.SignRequest, 0, len(ids))
	pend := make([]pendingSign, 0, len(ids))
	for _, id := range ids {
		if !a.cache.Has(id) {
			continue // removed meanwhile
		}
		key, csr, err := newKeyAndCSR()
		if err != nil {
			return err
		}
		reqs = append(reqs, nodeclient.SignRequest{EntryID: id, CSR: csr})
		pend = append(pend, pendingSign{id: id, key: key})
	}
	if len(reqs) == 0 {
		return nil
	}
	start := time.Now()
	gen := a.taintGen.Load()
	a.metrics.SigningBatch(len(reqs))
	results, err := c.BatchSign(ctx, reqs)
	if err != nil {
		return fmt.Errorf("sign X.509-SVIDs: %w", err)
	}
	// Check every SVID, then store them together: workloads get one
	// message for the batch.
	errs := make([]error, len(results))
	var svids []*svidcache.X509SVID
	var at []int
	for i, r := range results {
		if errs[i] = r.Err; r.Err != nil {
			continue
		}
		svid, err := a.checkSVID(pend[i].id, r.Chain, pend[i].key)
		if errs[i] = err; err == nil {
			svids = append(svids, svid)
			at = append(at, i)
		}
	}
	for j, err := range a.cache.SetX509SVIDs(svids) {
		if err == nil {
			err = a.scheduleSVID(svids[j])
		}
		errs[at[j]] = err
	}
	signed := 0
	var logged []string // the first entries signed, for the log
	for i, r := range results {
		id := pend[i].id
		r.Err = errs[i]
		switch {
		case r.Err == nil:
			signed++
			if len(logged) < maxLoggedEntryIDs {
				logged = append(logged, id)
			}
		case errors.Is(r.Err, svidcache.ErrUnknownEntry):
			// Removed while being signed.
		case errors.Is(r.Err, svidcache.ErrStale):
			a.sched.enqueue(id) // changed while being signed
		case errors.Is(r.Err, errTaintedIssuer):
			// Stored, but a tainted CA signed it: asked for before the
			// taint arrived, again at once; otherwise the server still
			// signs with it, so with backoff.
			if a.taintGen.Load() != gen {
				a.sched.enqueue(id)
				signed++
				continue
			}
			d := a.sched.failed(id, rand.Float64())
			a.log.Warn("X.509-SVID signed by a tainted CA; asking again later", "entry_id", id, "retry_in", d)
		default:
			if !a.cache.Has(id) {
				continue
			}
			d := a.sched.failed(id, rand.Float64())
			a.log.Warn("X.509-SVID not signed; retrying later", logkey.EntryID, id, logkey.Error, r.Err, "retry_in", d)
		}
	}
	a.metrics.Rotated(signed)
	a.log.Debug("X.509-SVIDs signed", logkey.EntryIDs, logged, "requested", len(reqs), "signed", signed, "elapsed", time.Since(start))
	return nil
}

// maxLoggedEntryIDs bounds the entry IDs one log record lists.
const maxLoggedEntryIDs = 20

// checkSVID checks an SVID from the server: it verifies to the bundle and
// certifies our key.
func (a *Agent) checkSVID(id string, chain [][]byte, key crypto.Signer) (*svidcache.X509SVID, error) {
	svid, err := svidcache.NewX509SVID(id, chain, key)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", nodeclient.ErrProtocol, err)
	}
	if _, err := x509ca.VerifyX509SVID(svid.Certificates(), a.authorities(), a.clk.Now()); err != nil {
		return nil, fmt.Errorf("%w: %w", nodeclient.ErrProtocol, err)
	}
	return svid, nil
}

// scheduleSVID schedules the rotation of an SVID the cache now holds, or
// returns errTaintedIssuer if a tainted CA signed it.
func (a *Agent) scheduleSVID(svid *svidcache.X509SVID) error {
	if a.cache.TaintedAuthority(svid.AuthorityID) {
		return errTaintedIssuer
	}
	start := rotate.Start(svid.NotBefore, a.clk.Now())
	jitter := rotate.NewJitter(start, svid.NotAfter)
	a.sched.signedAt(svid.EntryID, rotate.RotateAt(start, svid.NotAfter, jitter))
	return nil
}

// renewLoop renews the agent SVID when it falls due, then ends the session
// (errRenewed) so that the next connection uses it.
func (a *Agent) renewLoop(ctx context.Context, c *nodeclient.Client) error {
	t := a.clk.NewTimer(maxTimerWait)
	defer t.Stop()
	for {
		s := a.svid.Load()
		now := a.clk.Now()
		if a.renewDue(s, now) {
			if err := a.renew(ctx, c); err != nil {
				return err
			}
			return errRenewed
		}
		t.Stop()
		t.Reset(min(maxTimerWait, s.rotateAt().Sub(now)))
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
		}
	}
}

// renewDue reports whether the agent SVID s is to be renewed at now: at
// its rotation time, or at once after the wall clock stepped back past
// its arrival (see steppedBack), until the agent refuses an SVID that
// renewal brings: a clock that was corrected back agrees with the
// server's again, and the renewed SVID is valid at it; a clock that went
// wrong, behind the server's, would refuse every renewed SVID as not yet
// valid, and the agent then keeps the one it has, serving, until its
// rotation time. A renewal that fails otherwise (server unavailable, a
// failed save) is tried again.
func (a *Agent) renewDue(s *agentSVID, now time.Time) bool {
	if !now.Before(s.rotateAt()) {
		return true
	}
	return s.steppedBack(now) && a.steppedRenewal.Load() != s
}

// renew gets a new agent SVID for a new key and saves it.
func (a *Agent) renew(ctx context.Context, c *nodeclient.Client) error {
	old := a.svid.Load()
	key, csr, err := newKeyAndCSR()
	if err != nil {
		return err
	}
	chain, err := c.RenewAgent(ctx, csr)
	if err != nil {
		return fmt.Errorf("renew agent SVID: %w", err)
	}
	s, err := newAgentSVID(a.td, chain, key, a.bundle.Load(), a.clk.Now())
	if err != nil {
		a.steppedRenewal.Store(old) // see renewDue
		return fmt.Errorf("renew agent SVID: %w: %w", nodeclient.ErrProtocol, err)
	}
	s.received(a.clk.Now())
	if s.id != old.id {
		return fmt.Errorf("renew agent SVID: %w: it names %s, not %s", nodeclient.ErrProtocol, s.id, old.id)
	}
	if err := a.state.saveSVID(s); err != nil {
		return fmt.Errorf("save renewed agent SVID: %w", err)
	}
	a.setSVID(s)
	a.log.Info("agent SVID renewed", logkey.SPIFFEID, s.id.String(), "not_after", s.notAfter)
	return nil
}

// jwtSigner signs batches of JWT-SVIDs through the connected session;
// newJWTSigner puts a jwtbatch.Batcher in front of it for the cache.
type jwtSigner struct{ a *Agent }

// newJWTSigner returns the cache's JWT-SVID signer: concurrent requests
// are sent to the server together.
func newJWTSigner(a *Agent) (*jwtbatch.Batcher, error) {
	return jwtbatch.New(jwtbatch.Config{Signer: jwtSigner{a}})
}

func (j jwtSigner) BatchSignJWT(ctx context.Context, reqs []nodeclient.JWTRequest) ([]nodeclient.JWTResult, error) {
	out := make([]nodeclient.JWTResult, len(reqs))
	todo := make([]int, len(reqs)) // indexes of the requests to send
	for i := range todo {
		todo[i] = i
	}
	for {
		res, err := j.send(ctx, reqs, todo)
		if err != nil && len(todo) == len(reqs) {
			return nil, jwtSignError(err)
		}
		// Requests cut short by the end of the session are sent
		// again through the next one.
		again := todo[:0]
		for k, i := range todo {
			r := nodeclient.JWTResult{Err: err}
			if err == nil {
				r = res[k]
			}
			if retryClosed(ctx, r.Err) {
				again = append(again, i)
				continue
			}
			r.Err = jwtSignError(r.Err)
			out[i] = r
		}
		if len(again) == 0 {
			return out, nil
		}
		todo = again
	}
}

// send sends the requests reqs[i] for i in todo through the connected
// session; a failure of the call as a whole that ended with the session
// is returned as a result per request, so that they are sent again.
func (j jwtSigner) send(ctx context.Context, reqs []nodeclient.JWTRequest, todo []int) ([]nodeclient.JWTResult, error) {
	if j.a.revoked.Load() {
		return nil, errNotConnected
	}
	c, err := j.a.client.borrow(ctx)
	if err != nil {
		return nil, err
	}
	sub := make([]nodeclient.JWTRequest, len(todo))
	for k, i := range todo {
		sub[k] = reqs[i]
	}
	res, err := c.BatchSignJWT(ctx, sub)
	if retryClosed(ctx, err) {
		res = make([]nodeclient.JWTResult, len(sub))
		for k := range res {
			res[k].Err = err
		}
		err = nil
	}
	return res, err
}

// jwtSignError marks the errors of an unreachable or unauthenticated
// server as svidcache.ErrUnavailable.
func jwtSignError(err error) error {
	if errors.Is(err, nodeclient.ErrUnavailable) || errors.Is(err, nodeclient.ErrServerNotTrusted) {
		return fmt.Errorf("%w: %w", svidcache.ErrUnavailable, err)
	}
	return err
}

// Downstream forwards the downstream calls of workloads whose entries are
// downstream to the server, through the connected session.
type Downstream struct{ a *Agent }

// Downstream returns the agent's forwarder of downstream calls.
func (a *Agent) Downstream() Downstream { return Downstream{a: a} }

// call makes f with the connected session's client, and again with the
// next one's if that session ended under it.
func (d Downstream) call(ctx context.Context, f func(*nodeclient.Client) error) error {
	for {
		if d.a.revoked.Load() {
			return errNotConnected
		}
		c, err := d.a.client.borrow(ctx)
		if err != nil {
			return err
		}
		if err := f(c); !retryClosed(ctx, err) {
			return err
		}
	}
}

// MintX509CA has the server sign csr as a CA for entryID; see
// nodeclient.Client.MintDownstreamX509CA.
func (d Downstream) MintX509CA(ctx context.Context, entryID string, csr []byte, ttl time.Duration) (chain, authorities [][]byte, err error) {
	err = d.call(ctx, func(c *nodeclient.Client) error {
		chain, authorities, err = c.MintDownstreamX509CA(ctx, entryID, csr, ttl)
		return err
	})
	return chain, authorities, err
}

// PublishJWTAuthority has the server publish a JWT key of entryID; see
// nodeclient.Client.PublishDownstreamJWTAuthority.
func (d Downstream) PublishJWTAuthority(ctx context.Context, entryID, kid string, pub []byte, expires time.Time) (notAfter time.Time, bundle []byte, err error) {
	err = d.call(ctx, func(c *nodeclient.Client) error {
		notAfter, bundle, err = c.PublishDownstreamJWTAuthority(ctx, entryID, kid, pub, expires)
		return err
	})
	return notAfter, bundle, err
}
