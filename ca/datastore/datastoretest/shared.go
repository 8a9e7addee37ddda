package datastoretest

import (
	"crypto"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

// NewPairFunc returns two handles on one new, empty database for one
// test, as two CA servers sharing it would hold. It should register both
// handles' Close with t.Cleanup.
type NewPairFunc func(t *testing.T) (a, b datastore.Store)

// RunShared runs the tests of two handles sharing one database: what is
// written through one is seen through the other (Watch, Events,
// Snapshot), and the atomic operations stay atomic across handles. Only
// backends that allow several handles on one database run it (boltstore
// locks its file). Tests do not run in parallel.
func RunShared(t *testing.T, newPair NewPairFunc) {
	tests := []struct {
		name string
		fn   func(t *testing.T, a, b datastore.Store)
	}{
		{"ChangesSeenByOther", testChangesSeenByOther},
		{"ConsumeJoinTokenAcross", testConsumeJoinTokenAcross},
		{"UpdateBundleAcross", testUpdateBundleAcross},
		{"UpdateAgentAcross", testUpdateAgentAcross},
		{"UpdateEntryAcross", testUpdateEntryFields},
		{"RevisionsInCommitOrderAcross", testRevisionsInCommitOrder},
		{"UseClientAssertionAcross", testUseClientAssertionRace},
		{"RevocationSeenByOther", testRevocationSeenByOther},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := newPair(t)
			tt.fn(t, a, b)
		})
	}
}

// onOne adapts a test of two handles to one store, used as both.
func onOne(fn func(t *testing.T, a, b datastore.Store)) func(t *testing.T, newStore NewStoreFunc) {
	return func(t *testing.T, newStore NewStoreFunc) {
		s := newStore(t)
		fn(t, s, s)
	}
}

// pick returns a for even i and b for odd i.
func pick(i int, a, b datastore.Store) datastore.Store {
	if i%2 == 0 {
		return a
	}
	return b
}

func testChangesSeenByOther(t *testing.T, a, b datastore.Store) {
	ctx := t.Context()
	ch, stop := b.Watch()
	defer stop()
	start := latestRevision(t, b)

	// An entry created through a: b's watch fires, and b's Events and
	// Snapshot have it by then.
	drain(ch)
	e := create(t, a, newEntry(t, "/w/a", "/agent/1", "unix:uid:1"))[0]
	for seen := false; !seen; {
		waitSignal(t, "b's watch after a created an entry", ch)
		evs := allEvents(t, b, start)
		seen = len(evs) > 0 && evs[len(evs)-1].Revision == e.Revision
	}
	evs := allEvents(t, b, start)
	if len(evs) != 1 || evs[0].Key != e.ID {
		t.Fatalf("b's events after a's create: %+v", evs)
	}
	requireEntry(t, "event entry seen by b", e, evs[0].Entry)
	snap, err := b.Snapshot(ctx)
	requireNoError(t, "b.Snapshot", err)
	if snap.Revision < e.Revision {
		t.Errorf("b's snapshot revision %d is below a's write at %d", snap.Revision, e.Revision)
	}
	requireSameEntries(t, "b's snapshot", []*entry.Entry{e}, snap.Entries)

	// Every kind of change through a signals b, including those that log
	// no event (a server looks at CA keys on every signal).
	for _, c := range []struct {
		name string
		fn   func() error
	}{
		{"UpdateEntry", func() error {
			_, err := a.UpdateEntry(ctx, e.ID, func(e *entry.Entry) error { e.Admin = true; return nil })
			return err
		}},
		{"CreateAgent", func() error { return a.CreateAgent(ctx, newAgent("/agent/1")) }},
		{"UpdateBundle", func() error {
			_, err := a.UpdateBundle(ctx, td, func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error) { return newBundle(t, td), nil })
			return err
		}},
		{"PutCAKey", func() error {
			return a.PutCAKey(ctx, &datastore.CAKey{ID: "k", Kind: datastore.CAKeyJWT, State: datastore.CAKeyActive, ServerID: "a"})
		}},
		{"DeleteEntry", func() error { _, err := a.DeleteEntry(ctx, e.ID); return err }},
	} {
		drain(ch)
		requireNoError(t, c.name, c.fn())
		waitSignal(t, "b's watch after a's "+c.name, ch)
	}
	keys, err := b.ListCAKeys(ctx)
	requireNoError(t, "b.ListCAKeys", err)
	if len(keys) != 1 || keys[0].ServerID != "a" {
		t.Errorf("b lists CA keys %+v, want the one a put", keys)
	}
	snap, err = b.Snapshot(ctx)
	requireNoError(t, "b.Snapshot", err)
	if len(snap.Entries) != 0 {
		t.Errorf("b's snapshot after a's delete has entries %+v", snap.Entries)
	}
}

func testConsumeJoinTokenAcross(t *testing.T, a, b datastore.Store) {
	const tokens, racersPerHandle = 5, 8
	for k := range tokens {
		hash := fmt.Sprintf("across-%d", k)
		requireNoError(t, "CreateJoinToken", pick(k, a, b).CreateJoinToken(t.Context(), &datastore.JoinToken{
			Hash: hash, SPIFFEID: id("/agent/race"), ExpiresAt: t0.Add(time.Hour), CreatedAt: t0,
		}))
		start := make(chan struct{})
		errs := make([]error, 2*racersPerHandle)
		var wg sync.WaitGroup
		for i := range errs {
			wg.Go(func() {
				<-start
				tok, err := pick(i, a, b).ConsumeJoinToken(t.Context(), hash, t0)
				if err == nil && (tok == nil || tok.Hash != hash) {
					err = fmt.Errorf("returned token %+v", tok)
				}
				errs[i] = err
			})
		}
		close(start)
		wg.Wait()
		winners := 0
		for i, err := range errs {
			switch {
			case err == nil:
				winners++
			case !errors.Is(err, datastore.ErrNotFound):
				t.Errorf("token %d: caller %d: %v", k, i, err)
			}
		}
		if winners != 1 {
			t.Errorf("token %d: %d of %d callers on two handles consumed it, want exactly 1", k, winners, len(errs))
		}
	}
}

func testUpdateBundleAcross(t *testing.T, a, b datastore.Store) {
	const writers, perWriter = 8, 3
	keys := map[string]crypto.PublicKey{}
	for w := range writers {
		for i := range perWriter {
			keys[fmt.Sprintf("kid-%d-%d", w, i)] = newJWTKey(t)
		}
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			<-start
			for i := range perWriter {
				kid := fmt.Sprintf("kid-%d-%d", w, i)
				_, err := pick(w, a, b).UpdateBundle(t.Context(), td, func(cur *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
					if cur == nil {
						cur = spiffebundle.New(td)
					}
					return cur, cur.AddJWTAuthority(kid, keys[kid])
				})
				if err != nil {
					t.Errorf("UpdateBundle adding %s: %v", kid, err)
				}
			}
		})
	}
	close(start)
	wg.Wait()
	want := spiffebundle.FromJWTAuthorities(td, keys)
	for i, s := range []datastore.Store{a, b} {
		got, err := s.FetchBundle(t.Context(), td)
		requireNoError(t, "FetchBundle", err)
		requireBundle(t, fmt.Sprintf("handle %d after concurrent updates through both", i), want, got)
	}
}

func testUpdateAgentAcross(t *testing.T, a, b datastore.Store) {
	agent := newAgent("/agent/1")
	agent.SerialNumber = "0"
	requireNoError(t, "CreateAgent", a.CreateAgent(t.Context(), agent))
	const writers, perWriter = 8, 10
	start := make(chan struct{})
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			<-start
			for range perWriter {
				_, err := pick(w, a, b).UpdateAgent(t.Context(), agent.SPIFFEID, func(a *datastore.Agent) error {
					n, err := strconv.Atoi(a.SerialNumber)
					if err != nil {
						return err
					}
					a.SerialNumber = strconv.Itoa(n + 1)
					return nil
				})
				if err != nil {
					t.Errorf("UpdateAgent: %v", err)
					return
				}
			}
		})
	}
	close(start)
	wg.Wait()
	got, err := b.FetchAgent(t.Context(), agent.SPIFFEID)
	requireNoError(t, "FetchAgent", err)
	if want := strconv.Itoa(writers * perWriter); got.SerialNumber != want {
		t.Errorf("after %d increments through two handles the counter is %s: updates were lost", writers*perWriter, got.SerialNumber)
	}
}

// testUpdateEntryFields updates different fields of one entry at once,
// through a and b: no update may drop another's.
func testUpdateEntryFields(t *testing.T, a, b datastore.Store) {
	e := create(t, a, newEntry(t, "/w/a", "/agent/1", "unix:uid:1"))[0]
	const perWriter = 15
	writers := []func(i int, e *entry.Entry){
		func(i int, e *entry.Entry) { e.DNSNames = append(e.DNSNames, fmt.Sprintf("a%d.example.org", i)) },
		func(i int, e *entry.Entry) { e.DNSNames = append(e.DNSNames, fmt.Sprintf("b%d.example.org", i)) },
		func(i int, e *entry.Entry) { e.X509SVIDTTL += time.Second },
		func(i int, e *entry.Entry) { e.JWTSVIDTTL += time.Second },
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for w, change := range writers {
		wg.Go(func() {
			<-start
			for i := range perWriter {
				_, err := pick(w, a, b).UpdateEntry(t.Context(), e.ID, func(e *entry.Entry) error {
					change(i, e)
					return nil
				})
				if err != nil {
					t.Errorf("UpdateEntry: %v", err)
					return
				}
			}
		})
	}
	close(start)
	wg.Wait()
	got, err := b.FetchEntry(t.Context(), e.ID)
	requireNoError(t, "FetchEntry", err)
	want := e.Clone()
	for i := range perWriter {
		want.DNSNames = append(want.DNSNames, fmt.Sprintf("a%d.example.org", i), fmt.Sprintf("b%d.example.org", i))
	}
	want.X509SVIDTTL += perWriter * time.Second
	want.JWTSVIDTTL += perWriter * time.Second
	slices.Sort(want.DNSNames)
	gotSorted := got.Clone()
	slices.Sort(gotSorted.DNSNames)
	want.Revision = got.Revision
	requireEntry(t, "entry after concurrent updates of different fields", want, gotSorted)
	if evs := allEvents(t, a, e.Revision); len(evs) != len(writers)*perWriter {
		t.Errorf("got %d events for %d updates", len(evs), len(writers)*perWriter)
	}
}

// testRevisionsInCommitOrder writes from several goroutines through a
// and b while reading the event log through b: each read must extend the
// one before it, never showing a revision below one already seen.
func testRevisionsInCommitOrder(t *testing.T, a, b datastore.Store) {
	const writers, perWriter = 6, 25
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				s := pick(w, a, b)
				var err error
				switch i % 3 {
				case 0, 1:
					var res []datastore.EntryResult
					res, err = s.CreateEntries(t.Context(), []*entry.Entry{
						newEntry(t, fmt.Sprintf("/w/%d/%d", w, i), "/agent/1", "unix:uid:1"),
						newEntry(t, fmt.Sprintf("/w/%d/%d/b", w, i), "/agent/1", "unix:uid:1"),
					})
					if err == nil && (res[0].Err != nil || res[1].Err != nil) {
						err = fmt.Errorf("%v, %v", res[0].Err, res[1].Err)
					}
				case 2:
					err = s.CreateAgent(t.Context(), newAgent(fmt.Sprintf("/agent/%d/%d", w, i)))
				}
				if err != nil {
					t.Errorf("writer %d: %v", w, err)
					return
				}
			}
		})
	}
	go func() {
		wg.Wait()
		close(done)
	}()
	var seen []uint64
	reads := 0
	for running := true; running; reads++ {
		select {
		case <-done:
			running = false
		default:
		}
		got := revisions(allEvents(t, b, 0))
		if len(got) < len(seen) || !slices.Equal(got[:len(seen)], seen) {
			t.Errorf("read %d: events %v do not extend the %d seen before (a revision became visible after a higher one)", reads, got, len(seen))
			<-done
			return
		}
		seen = got
	}
	want := 0
	for i := range perWriter {
		if i%3 == 2 {
			want++
		} else {
			want += 2
		}
	}
	if want *= writers; len(seen) != want {
		t.Errorf("got %d events, want %d", len(seen), want)
	}
	t.Logf("%d reads of the event log", reads)
}
