package datastoretest

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

// testReturnsCopies checks that the store shares no memory with its
// callers: changing what was passed in, or what came back, changes
// nothing stored.
func testReturnsCopies(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	ctx := t.Context()
	mutate := func(e *entry.Entry) {
		e.Selectors[0].Value = "uid:12345"
		e.DNSNames[0] = "mutated.example.org"
		e.SPIFFEID = id("/mutated")
		e.Revision = 999_999
	}
	in := newEntry(t, "/w/a", "/agent/1", "unix:uid:1", "unix:gid:1")
	created := create(t, s, in)[0]
	want := created.Clone()
	check := func(what string) {
		t.Helper()
		got, err := s.FetchEntry(ctx, want.ID)
		requireNoError(t, "FetchEntry", err)
		requireEntry(t, "after mutating "+what, want, got)
		list, err := s.ListEntries(ctx, datastore.EntryFilter{Selectors: want.Selectors[:1]})
		requireNoError(t, "ListEntries", err)
		requireSameEntries(t, "listed after mutating "+what, []*entry.Entry{want}, list)
	}
	mutate(in)
	mutate(created)
	check("CreateEntries' input and result")

	fetched, err := s.FetchEntry(ctx, want.ID)
	requireNoError(t, "FetchEntry", err)
	mutate(fetched)
	check("FetchEntry's result")

	list, err := s.ListEntries(ctx, datastore.EntryFilter{})
	requireNoError(t, "ListEntries", err)
	mutate(list[0])
	check("ListEntries' result")

	snap, err := s.Snapshot(ctx)
	requireNoError(t, "Snapshot", err)
	mutate(snap.Entries[0])
	check("Snapshot's result")

	evs := allEvents(t, s, 0)
	mutate(evs[0].Entry)
	requireEntry(t, "event after mutating Events' result", want, allEvents(t, s, 0)[0].Entry)

	upd := want.Clone()
	upd.Admin = true
	updated, err := replace(ctx, s, upd)
	requireNoError(t, "UpdateEntry", err)
	want = updated.Clone()
	mutate(upd)
	mutate(updated)
	check("UpdateEntry's input and result")

	// Agents.
	agent := newAgent("/agent/1")
	wantAgent := *agent
	requireNoError(t, "CreateAgent", s.CreateAgent(ctx, agent))
	agent.SerialNumber = "mutated"
	gotAgent, err := s.FetchAgent(ctx, wantAgent.SPIFFEID)
	requireNoError(t, "FetchAgent", err)
	requireAgent(t, "agent after mutating CreateAgent's input", &wantAgent, gotAgent)
	gotAgent.Banned = true
	gotAgent, err = s.FetchAgent(ctx, wantAgent.SPIFFEID)
	requireNoError(t, "FetchAgent", err)
	requireAgent(t, "agent after mutating FetchAgent's result", &wantAgent, gotAgent)

	// CA keys, whose byte slices must be copied both ways.
	cert, _ := newCA(t, td)
	key := &datastore.CAKey{ID: "k", Kind: datastore.CAKeyX509, State: datastore.CAKeyActive, CertDER: append([]byte(nil), cert.Raw...)}
	wantKey := normCAKey(key)
	wantKey.CertDER = append([]byte(nil), cert.Raw...)
	requireNoError(t, "PutCAKey", s.PutCAKey(ctx, key))
	key.CertDER[0] ^= 0xff
	keys, err := s.ListCAKeys(ctx)
	requireNoError(t, "ListCAKeys", err)
	requireCAKeys(t, "CA keys after mutating PutCAKey's input", []*datastore.CAKey{wantKey}, keys)
	keys[0].CertDER[0] ^= 0xff
	keys, err = s.ListCAKeys(ctx)
	requireNoError(t, "ListCAKeys", err)
	requireCAKeys(t, "CA keys after mutating ListCAKeys' result", []*datastore.CAKey{wantKey}, keys)

	// Bundles.
	b := newBundle(t, td)
	wantBundle := b.Clone()
	got, err := s.UpdateBundle(ctx, td, func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error) { return b, nil })
	requireNoError(t, "UpdateBundle", err)
	requireNoError(t, "AddJWTAuthority", b.AddJWTAuthority("mutated-1", newJWTKey(t)))
	requireNoError(t, "AddJWTAuthority", got.AddJWTAuthority("mutated-2", newJWTKey(t)))
	fetchedBundle, err := s.FetchBundle(ctx, td)
	requireNoError(t, "FetchBundle", err)
	requireBundle(t, "bundle after mutating UpdateBundle's fn result and result", wantBundle, fetchedBundle)
	requireNoError(t, "AddJWTAuthority", fetchedBundle.AddJWTAuthority("mutated-3", newJWTKey(t)))
	fetchedBundle, err = s.FetchBundle(ctx, td)
	requireNoError(t, "FetchBundle", err)
	requireBundle(t, "bundle after mutating FetchBundle's result", wantBundle, fetchedBundle)

	// Join tokens.
	tok := &datastore.JoinToken{Hash: "h", SPIFFEID: id("/agent/2"), ExpiresAt: t0.Add(time.Hour), CreatedAt: t0}
	wantTok := *tok
	requireNoError(t, "CreateJoinToken", s.CreateJoinToken(ctx, tok))
	tok.SPIFFEID = id("/agent/mutated")
	tok.ExpiresAt = t0.Add(-time.Hour)
	gotTok, err := s.ConsumeJoinToken(ctx, "h", t0)
	requireNoError(t, "ConsumeJoinToken", err)
	if !reflect.DeepEqual(normToken(gotTok), normToken(&wantTok)) {
		t.Errorf("token after mutating CreateJoinToken's input:\n got %+v\nwant %+v", gotTok, wantTok)
	}
}

// testContextCanceled checks that every method taking a context gives up
// when it is canceled, and that canceled writes write nothing.
func testContextCanceled(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	ctx := t.Context()

	// One record of each kind, for updates and deletes to act on.
	e := create(t, s, newEntry(t, "/w/a", "/agent/1", "unix:uid:1"))[0]
	agent := newAgent("/agent/1")
	requireNoError(t, "CreateAgent", s.CreateAgent(ctx, agent))
	requireNoError(t, "CreateJoinToken", s.CreateJoinToken(ctx, &datastore.JoinToken{
		Hash: "h", SPIFFEID: id("/agent/2"), ExpiresAt: t0.Add(time.Hour), CreatedAt: t0,
	}))
	b := newBundle(t, td)
	_, err := s.UpdateBundle(ctx, td, func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error) { return b, nil })
	requireNoError(t, "UpdateBundle", err)
	caKey := &datastore.CAKey{ID: "k", Kind: datastore.CAKeyJWT, State: datastore.CAKeyActive}
	requireNoError(t, "PutCAKey", s.PutCAKey(ctx, caKey))
	before, err := s.Snapshot(ctx)
	requireNoError(t, "Snapshot", err)

	canceled, cancel := context.WithCancel(ctx)
	cancel()
	upd := e.Clone()
	upd.Admin = true
	updAgent := *agent
	updAgent.Banned = true
	for _, c := range []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"CreateEntries", func(ctx context.Context) error {
			_, err := s.CreateEntries(ctx, []*entry.Entry{newEntry(t, "/w/b", "/agent/1", "unix:uid:1")})
			return err
		}},
		{"FetchEntry", func(ctx context.Context) error { _, err := s.FetchEntry(ctx, e.ID); return err }},
		{"ListEntries", func(ctx context.Context) error { _, err := s.ListEntries(ctx, datastore.EntryFilter{}); return err }},
		{"ListEntries by parent", func(ctx context.Context) error {
			_, err := s.ListEntries(ctx, datastore.EntryFilter{ParentID: e.ParentID})
			return err
		}},
		{"UpdateEntry", func(ctx context.Context) error { _, err := replace(ctx, s, upd); return err }},
		{"DeleteEntry", func(ctx context.Context) error { _, err := s.DeleteEntry(ctx, e.ID); return err }},
		{"CreateAgent", func(ctx context.Context) error { return s.CreateAgent(ctx, newAgent("/agent/2")) }},
		{"FetchAgent", func(ctx context.Context) error { _, err := s.FetchAgent(ctx, agent.SPIFFEID); return err }},
		{"ListAgents", func(ctx context.Context) error { _, err := s.ListAgents(ctx); return err }},
		{"UpdateAgent", func(ctx context.Context) error {
			_, err := s.UpdateAgent(ctx, agent.SPIFFEID, func(a *datastore.Agent) error { *a = updAgent; return nil })
			return err
		}},
		{"DeleteAgent", func(ctx context.Context) error { _, err := s.DeleteAgent(ctx, agent.SPIFFEID); return err }},
		{"CreateJoinToken", func(ctx context.Context) error {
			return s.CreateJoinToken(ctx, &datastore.JoinToken{Hash: "h2", SPIFFEID: id("/agent/3"), ExpiresAt: t0.Add(time.Hour)})
		}},
		{"ConsumeJoinToken", func(ctx context.Context) error { _, err := s.ConsumeJoinToken(ctx, "h", t0); return err }},
		{"PruneJoinTokens", func(ctx context.Context) error { _, err := s.PruneJoinTokens(ctx, t0.Add(24*time.Hour)); return err }},
		{"FetchBundle", func(ctx context.Context) error { _, err := s.FetchBundle(ctx, td); return err }},
		{"ListBundles", func(ctx context.Context) error { _, err := s.ListBundles(ctx); return err }},
		{"UpdateBundle", func(ctx context.Context) error {
			_, err := s.UpdateBundle(ctx, td, func(cur *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
				cur.SetSequenceNumber(100)
				return cur, nil
			})
			return err
		}},
		{"DeleteBundle", func(ctx context.Context) error { return s.DeleteBundle(ctx, td) }},
		{"PutCAKey", func(ctx context.Context) error {
			return s.PutCAKey(ctx, &datastore.CAKey{ID: "k2", Kind: datastore.CAKeyJWT, State: datastore.CAKeyActive})
		}},
		{"ListCAKeys", func(ctx context.Context) error { _, err := s.ListCAKeys(ctx); return err }},
		{"DeleteCAKey", func(ctx context.Context) error { return s.DeleteCAKey(ctx, caKey.ID) }},
		{"Events", func(ctx context.Context) error { _, err := s.Events(ctx, 0, 10); return err }},
		{"Snapshot", func(ctx context.Context) error { _, err := s.Snapshot(ctx); return err }},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := c.call(canceled); !errors.Is(err, context.Canceled) {
				t.Errorf("with a canceled context: got error %v, want context.Canceled", err)
			}
		})
	}

	// Nothing was written.
	after, err := s.Snapshot(ctx)
	requireNoError(t, "Snapshot", err)
	if after.Revision != before.Revision {
		t.Errorf("revision moved from %d to %d", before.Revision, after.Revision)
	}
	requireSameEntries(t, "entries", before.Entries, after.Entries)
	agents, err := s.ListAgents(ctx)
	requireNoError(t, "ListAgents", err)
	requireAgents(t, "agents", []*datastore.Agent{agent}, agents)
	if _, err := s.ConsumeJoinToken(ctx, "h2", t0); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("canceled CreateJoinToken stored a token (ConsumeJoinToken: %v)", err)
	}
	if _, err := s.ConsumeJoinToken(ctx, "h", t0); err != nil {
		t.Errorf("canceled ConsumeJoinToken or PruneJoinTokens removed the token: %v", err)
	}
	gotBundle, err := s.FetchBundle(ctx, td)
	requireNoError(t, "FetchBundle", err)
	requireBundle(t, "bundle", b, gotBundle)
	keys, err := s.ListCAKeys(ctx)
	requireNoError(t, "ListCAKeys", err)
	requireCAKeys(t, "CA keys", []*datastore.CAKey{caKey}, keys)
}

func testCloseIdempotent(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
