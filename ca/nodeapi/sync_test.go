package nodeapi_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/nodeapi"
)

// syncStream reads a Sync stream in the background.
type syncStream struct {
	t    testing.TB
	msgs chan *nodev1.SyncResponse
	// err receives the error that ended the stream.
	err chan error
	// done is closed when the reader stops.
	done chan struct{}
	// have is the agent's view: entries by ID, as the messages so far
	// leave it.
	have   map[string]*nodev1.Entry
	bundle []byte
	// lastTainted is the last tainted set received.
	lastTainted *nodev1.TaintedAuthorities
	// close ends the stream from the agent's side.
	close context.CancelFunc
}

func (e *env) sync(a *agent) *syncStream {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	e.t.Cleanup(cancel)
	stream, err := a.client.Sync(ctx, &nodev1.SyncRequest{})
	if err != nil {
		e.t.Fatalf("Sync: %v", err)
	}
	s := &syncStream{t: e.t, msgs: make(chan *nodev1.SyncResponse, 64), err: make(chan error, 1), done: make(chan struct{}), have: map[string]*nodev1.Entry{}, close: cancel}
	go func() {
		defer close(s.done)
		for {
			m, err := stream.Recv()
			if err != nil {
				s.err <- err
				return
			}
			select {
			case s.msgs <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	return s
}

// next returns the next message and applies it to the view.
func (s *syncStream) next() *nodev1.SyncResponse {
	s.t.Helper()
	select {
	case m := <-s.msgs:
		if m.Full {
			s.have = map[string]*nodev1.Entry{}
		}
		for _, en := range m.Entries {
			s.have[en.Id] = en
		}
		for _, id := range m.DeletedEntryIds {
			delete(s.have, id)
		}
		if m.Bundle != nil {
			s.bundle = m.Bundle
		}
		if m.Tainted != nil {
			s.lastTainted = m.Tainted
		}
		return m
	case err := <-s.err:
		s.t.Fatalf("stream ended: %v", err)
	case <-time.After(5 * time.Second):
		s.t.Fatal("no Sync message after 5s")
	}
	return nil
}

// until reads messages until cond holds for the view.
func (s *syncStream) until(what string, cond func() bool) {
	s.t.Helper()
	for !cond() {
		s.next()
	}
}

// end waits for the stream to end and returns its error.
func (s *syncStream) end() error {
	s.t.Helper()
	for {
		select {
		case <-s.msgs:
		case err := <-s.err:
			return err
		case <-time.After(5 * time.Second):
			s.t.Fatal("stream still open after 5s")
			return nil
		}
	}
}

// quiet fails if a message arrives within d.
func (s *syncStream) quiet(d time.Duration) {
	s.t.Helper()
	select {
	case m := <-s.msgs:
		s.t.Fatalf("unexpected message: %v", m)
	case <-time.After(d):
	}
}

func (s *syncStream) ids() []string {
	var ids []string
	for id := range s.have {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func entryIDs(es ...*entry.Entry) []string {
	var ids []string
	for _, e := range es {
		ids = append(ids, e.ID)
	}
	slices.Sort(ids)
	return ids
}

func TestSyncFullSet(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	b := e.attest(agentB)
	withTTL := e.createEntry("spiffe://example.org/w1", agentA, func(en *entry.Entry) {
		en.X509SVIDTTL = 10 * time.Minute
		en.JWTSVIDTTL = time.Minute
		en.DNSNames = []string{"w1.example.org", "w1"}
		en.Selectors = []entry.Selector{{Type: "unix", Value: "uid:1"}, {Type: "unix", Value: "user:w1"}}
		en.Admin = true
	})
	noTTL := e.createEntry("spiffe://example.org/w2", agentA, nil)
	other := e.createEntry("spiffe://example.org/w3", agentB, nil)

	s := e.sync(a)
	m := s.next()
	if !m.Full || len(m.DeletedEntryIds) != 0 {
		t.Fatalf("first message: full %v, deleted %v", m.Full, m.DeletedEntryIds)
	}
	if got, want := s.ids(), entryIDs(withTTL, noTTL); !slices.Equal(got, want) {
		t.Fatalf("entries %v, want %v", got, want)
	}
	got := s.have[withTTL.ID]
	want := &nodev1.Entry{
		Id: withTTL.ID, SpiffeId: "spiffe://example.org/w1", Selectors: []string{"unix:uid:1", "unix:user:w1"},
		X509SvidTtl: 600, JwtSvidTtl: 60, DnsNames: []string{"w1.example.org", "w1"}, Admin: true, Revision: withTTL.Revision,
	}
	if got.String() != want.String() {
		t.Errorf("entry\n got %v\nwant %v", got, want)
	}
	if g := s.have[noTTL.ID]; g.X509SvidTtl != int64(nodeapi.DefaultX509SVIDTTL/time.Second) || g.JwtSvidTtl != int64(nodeapi.DefaultJWTSVIDTTL/time.Second) {
		t.Errorf("TTLs of an entry without: %d, %d; want the defaults", g.X509SvidTtl, g.JwtSvidTtl)
	}
	bundle, err := spiffebundle.Parse(td, m.Bundle)
	if err != nil || !bundle.Equal(e.bundle()) {
		t.Errorf("bundle in the full message: %v", err)
	}

	sb := e.sync(b)
	sb.next()
	if got, want := sb.ids(), entryIDs(other); !slices.Equal(got, want) {
		t.Errorf("agent b's entries %v, want %v", got, want)
	}
}

func TestSyncChanges(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	b := e.attest(agentB)
	sa, sb := e.sync(a), e.sync(b)
	sa.next()
	sb.next()

	// Create.
	en := e.createEntry("spiffe://example.org/w", agentA, nil)
	m := sa.next()
	if m.Full || len(m.Entries) != 1 || m.Entries[0].Id != en.ID || m.Bundle != nil {
		t.Fatalf("after create: %v", m)
	}

	// Update.
	upd := en.Clone()
	upd.DNSNames = []string{"w.example.org"}
	upd, err := e.store.UpdateEntry(context.Background(), upd.ID, func(cur *entry.Entry) error {
		cur.DNSNames = upd.DNSNames
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	m = sa.next()
	if len(m.Entries) != 1 || m.Entries[0].Revision != upd.Revision || !slices.Equal(m.Entries[0].DnsNames, upd.DNSNames) {
		t.Fatalf("after update: %v", m)
	}

	// Move to agent b: deleted for a, created for b.
	moved := upd.Clone()
	moved.ParentID = spiffeid.RequireFromString(agentB)
	if _, err := e.store.UpdateEntry(context.Background(), moved.ID, func(cur *entry.Entry) error {
		cur.ParentID = moved.ParentID
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	m = sa.next()
	if len(m.Entries) != 0 || !slices.Equal(m.DeletedEntryIds, []string{en.ID}) {
		t.Fatalf("a after the move: %v", m)
	}
	sb.until("b gets the moved entry", func() bool { return sb.have[en.ID] != nil })

	// And back.
	back := moved.Clone()
	back.ParentID = spiffeid.RequireFromString(agentA)
	if _, err := e.store.UpdateEntry(context.Background(), back.ID, func(cur *entry.Entry) error {
		cur.ParentID = back.ParentID
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sa.until("a gets it back", func() bool { return sa.have[en.ID] != nil })
	sb.until("b loses it", func() bool { return sb.have[en.ID] == nil })

	// Delete.
	if _, err := e.store.DeleteEntry(context.Background(), en.ID); err != nil {
		t.Fatal(err)
	}
	m = sa.next()
	if !slices.Equal(m.DeletedEntryIds, []string{en.ID}) || len(sa.have) != 0 {
		t.Fatalf("after delete: %v", m)
	}

	// Entries of other agents, created and deleted, are not a's business.
	x := e.createEntry("spiffe://example.org/x", agentB, nil)
	if _, err := e.store.DeleteEntry(context.Background(), x.ID); err != nil {
		t.Fatal(err)
	}
	sb.until("b sees x deleted", func() bool { return len(sb.have) == 0 })
	sa.quiet(100 * time.Millisecond)
}

func TestSyncBundleChange(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	s := e.sync(a)
	s.next()
	_, err := e.store.UpdateBundle(context.Background(), td, func(b *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
		b = b.Clone()
		if err := b.AddJWTAuthority("extra", newKey(t).Public()); err != nil {
			return nil, err
		}
		seq, _ := b.SequenceNumber()
		b.SetSequenceNumber(seq + 1)
		return b, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	m := s.next()
	if m.Full || len(m.Entries) != 0 || m.Bundle == nil {
		t.Fatalf("after a bundle change: %v", m)
	}
	b, err := spiffebundle.Parse(td, m.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := b.FindJWTAuthority("extra"); !ok || !b.Equal(e.bundle()) {
		t.Error("pushed bundle is not the new one")
	}
}

// TestSyncSlowReader: an agent that never reads its stream holds up
// neither the index nor other agents' streams.
func TestSyncSlowReader(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	slow := e.attest(agentB)
	// Open the slow stream and never read it.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := slow.client.Sync(ctx, &nodev1.SyncRequest{}); err != nil {
		t.Fatal(err)
	}
	s := e.sync(a)
	s.next()

	// Large entries for the slow agent: far more than the HTTP/2 flow
	// control windows, so its server-side Send blocks.
	big := make([]entry.Selector, entry.MaxSelectors)
	for i := range big {
		big[i] = entry.Selector{Type: "k8s", Value: fmt.Sprintf("%02d", i) + strings.Repeat("v", entry.MaxSelectorValue-2)}
	}
	for round := range 20 {
		var batch []*entry.Entry
		for i := range 25 {
			sel := slices.Clone(big)
			sel[0].Value = fmt.Sprintf("%02d-%03d-%03d", 0, round, i)
			batch = append(batch, &entry.Entry{SPIFFEID: spiffeid.RequireFromString(fmt.Sprintf("spiffe://example.org/big/%d/%d", round, i)), ParentID: slow.id, Selectors: sel})
		}
		res, err := e.store.CreateEntries(context.Background(), batch)
		if err != nil || res[0].Err != nil {
			t.Fatalf("create: %v %v", err, res[0].Err)
		}
		en := e.createEntry(fmt.Sprintf("spiffe://example.org/fast/%d", round), agentA, nil)
		start := time.Now()
		s.until("a gets its entry", func() bool { return s.have[en.ID] != nil })
		if d := time.Since(start); d > time.Second {
			t.Errorf("round %d: agent a got its entry after %v", round, d)
		}
	}
	// Make sure the test tested something: the slow stream is stuck in
	// Send.
	if !syncBlockedInSend() {
		t.Error("no Sync handler is blocked in Send; the slow reader was not slow enough")
	}
}

// syncBlockedInSend reports whether a Sync handler goroutine is blocked
// sending.
func syncBlockedInSend() bool {
	buf := make([]byte, 1<<22)
	n := runtime.Stack(buf, true)
	for _, g := range strings.Split(string(buf[:n]), "\n\n") {
		if strings.Contains(g, "nodeapi.(*handler).Sync") && strings.Contains(g, "SendMsg") {
			return true
		}
	}
	return false
}

// TestSyncEventsPruned: if the store drops events before the index reads
// them, the index reloads and every stream gets its full set.
func TestSyncEventsPruned(t *testing.T) {
	e := newEnv(t, envOptions{maxEvents: 5})
	a := e.attest(agentA)
	b := e.attest(agentB)
	sa, sb := e.sync(a), e.sync(b)
	sa.next()
	sb.next()
	gone := e.createEntry("spiffe://example.org/gone", agentA, nil)
	sa.until("a has gone", func() bool { return sa.have[gone.ID] != nil })

	gate := make(chan struct{})
	e.store.eventsGate.Store(&gate)
	var want []*entry.Entry
	for i := range 10 {
		want = append(want, e.createEntry(fmt.Sprintf("spiffe://example.org/w%d", i), agentA, nil))
	}
	if _, err := e.store.DeleteEntry(context.Background(), gone.ID); err != nil {
		t.Fatal(err)
	}
	e.store.eventsGate.Store(nil)
	close(gate)

	m := sa.next()
	if !m.Full || m.Bundle == nil {
		t.Fatalf("after pruned events: full %v, bundle %d bytes", m.Full, len(m.Bundle))
	}
	if got := sa.ids(); !slices.Equal(got, entryIDs(want...)) {
		t.Errorf("full set %v, want %v", got, entryIDs(want...))
	}
	if m := sb.next(); !m.Full || len(m.Entries) != 0 {
		t.Errorf("b after pruned events: %v", m)
	}
	if len(e.logs.find("datastore events were pruned before the index read them; reloading the entries and sending every stream its full set")) == 0 {
		t.Error("reload not logged")
	}
}

// TestSyncEndsWhenSVIDExpires: a stream does not outlive the agent
// certificate it was opened with.
func TestSyncEndsWhenSVIDExpires(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	s := e.sync(a)
	s.next()
	// The renewer's timer and the stream's.
	if err := e.clock.WaitForTimers(ctxT(t), 2); err != nil {
		t.Fatal(err)
	}
	e.clock.Set(a.leaf.NotAfter.Add(time.Second))
	wantCode(t, s.end(), codes.PermissionDenied, "agent SVID has expired")
}

// TestSyncEndsWhenClockStepsPastExpiry: after the wall clock steps past
// the agent certificate's expiry, the stream ends within a minute of time
// passing, not when a wait computed before the step would have.
func TestSyncEndsWhenClockStepsPastExpiry(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	s := e.sync(a)
	s.next()
	// The renewer's timer and the stream's.
	if err := e.clock.WaitForTimers(ctxT(t), 2); err != nil {
		t.Fatal(err)
	}
	e.clock.Jump(a.leaf.NotAfter.Add(time.Second).Sub(e.clock.Now()))
	e.clock.Advance(time.Minute)
	wantCode(t, s.end(), codes.PermissionDenied, "agent SVID has expired")
}

// TestRunStops: cancelling Run ends open streams, and Run returns once its
// goroutines have stopped.
func TestRunStops(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	s := e.sync(a)
	s.next()
	e.stop()
	wantCode(t, s.end(), codes.Unavailable, "")
	eventually(t, "no goroutine of the service left", func() bool {
		buf := make([]byte, 1<<22)
		return !strings.Contains(string(buf[:runtime.Stack(buf, true)]), "writ.dev/writ/ca/nodeapi.(*")
	})
	// Calls are refused once it has stopped.
	_, err := a.client.BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{})
	wantCode(t, err, codes.Unavailable, "")
	if err := e.svc.Run(context.Background()); err == nil {
		t.Error("second Run succeeded")
	}
}

// TestChangeFeedOutage: while the store's change feed fails, the service
// keeps serving what it knows; it recovers on its own.
func TestChangeFeedOutage(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	known := e.createEntry("spiffe://example.org/known", agentA, nil)
	s := e.sync(a)
	s.until("known entry", func() bool { return s.have[known.ID] != nil })

	outage := errors.New("disk on fire")
	e.store.eventsErr.Store(&outage)
	added := e.createEntry("spiffe://example.org/added", agentA, nil)
	eventually(t, "failure logged", func() bool {
		return len(e.logs.find("cannot read the datastore's change feed; serving the last known entries and agents")) > 0
	})
	resp, err := a.client.BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{Requests: []*nodev1.X509SVIDRequest{{EntryId: known.ID, Csr: newCSR(t, newKey(t))}}})
	if err != nil || resp.Results[0].Status.GetCode() != 0 {
		t.Fatalf("signing a known entry during the outage: %v %v", err, resp)
	}
	s.quiet(50 * time.Millisecond)

	e.store.eventsErr.Store(nil)
	// The retry timer (and the renewer's).
	if err := e.clock.WaitForTimers(ctxT(t), 3); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Second)
	s.until("added entry after recovery", func() bool { return s.have[added.ID] != nil })
	eventually(t, "recovery logged", func() bool { return len(e.logs.find("datastore change feed recovered")) > 0 })
}
