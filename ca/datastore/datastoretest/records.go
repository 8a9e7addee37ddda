package datastoretest

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

func testAgents(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	ctx := t.Context()
	a1, a2 := newAgent("/agent/1"), newAgent("/agent/2")
	a2.AttestationType = "x509pop"
	a2.PrevSerialNumber = ""

	list, err := s.ListAgents(ctx)
	requireNoError(t, "ListAgents", err)
	if len(list) != 0 {
		t.Fatalf("new store lists agents: %+v", list)
	}
	requireNoError(t, "CreateAgent", s.CreateAgent(ctx, a1))
	requireNoError(t, "CreateAgent", s.CreateAgent(ctx, a2))
	dup := newAgent("/agent/1")
	dup.SerialNumber = "1"
	requireErrorIs(t, "CreateAgent of an existing SPIFFE ID", s.CreateAgent(ctx, dup), datastore.ErrAlreadyExists)

	got, err := s.FetchAgent(ctx, a1.SPIFFEID)
	requireNoError(t, "FetchAgent", err)
	requireAgent(t, "fetched", a1, got)
	_, err = s.FetchAgent(ctx, id("/agent/9"))
	requireErrorIs(t, "FetchAgent of an unknown agent", err, datastore.ErrNotFound)

	list, err = s.ListAgents(ctx)
	requireNoError(t, "ListAgents", err)
	requireAgents(t, "listed", []*datastore.Agent{a1, a2}, list)

	upd := newAgent("/agent/1")
	upd.SerialNumber, upd.PrevSerialNumber = "555", a1.SerialNumber
	upd.CertNotAfter = t0.Add(2 * time.Hour)
	upd.Banned = true
	upd.UpdatedAt = t0.Add(time.Hour)
	returned, err := s.UpdateAgent(ctx, a1.SPIFFEID, func(a *datastore.Agent) error {
		requireAgent(t, "passed to UpdateAgent's fn", a1, a)
		*a = *upd
		return nil
	})
	requireNoError(t, "UpdateAgent", err)
	requireAgent(t, "returned by UpdateAgent", upd, returned)
	got, err = s.FetchAgent(ctx, a1.SPIFFEID)
	requireNoError(t, "FetchAgent", err)
	requireAgent(t, "after update", upd, got)
	_, err = s.UpdateAgent(ctx, id("/agent/9"), func(*datastore.Agent) error { return nil })
	requireErrorIs(t, "UpdateAgent of an unknown agent", err, datastore.ErrNotFound)
	if _, err := s.FetchAgent(ctx, id("/agent/9")); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("UpdateAgent of an unknown agent created it (FetchAgent: %v)", err)
	}
	errStop := errors.New("stop")
	_, err = s.UpdateAgent(ctx, a1.SPIFFEID, func(a *datastore.Agent) error { a.Banned = false; return errStop })
	requireErrorIs(t, "UpdateAgent whose fn fails", err, errStop)
	_, err = s.UpdateAgent(ctx, a1.SPIFFEID, func(a *datastore.Agent) error { a.SPIFFEID = id("/agent/other"); return nil })
	if err == nil {
		t.Error("UpdateAgent let fn change the SPIFFE ID")
	}
	got, err = s.FetchAgent(ctx, a1.SPIFFEID)
	requireNoError(t, "FetchAgent", err)
	requireAgent(t, "after refused updates", upd, got)

	deleted, err := s.DeleteAgent(ctx, a1.SPIFFEID)
	requireNoError(t, "DeleteAgent", err)
	requireAgent(t, "returned by DeleteAgent", upd, deleted)
	_, err = s.FetchAgent(ctx, a1.SPIFFEID)
	requireErrorIs(t, "FetchAgent after delete", err, datastore.ErrNotFound)
	_, err = s.DeleteAgent(ctx, a1.SPIFFEID)
	requireErrorIs(t, "DeleteAgent again", err, datastore.ErrNotFound)
	list, err = s.ListAgents(ctx)
	requireNoError(t, "ListAgents", err)
	requireAgents(t, "listed after delete", []*datastore.Agent{a2}, list)
	// The SPIFFE ID is free again.
	requireNoError(t, "CreateAgent after delete", s.CreateAgent(ctx, a1))
}

// testAgentNodeSelectors: an agent's node selectors survive create,
// update, fetch, list and delete unchanged and in order; an update may
// replace or remove them.
func testAgentNodeSelectors(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	ctx := t.Context()
	a := newAgent("/writ/agent/x509pop/0a1b")
	a.AttestationType = "x509pop"
	a.Selectors = []entry.Selector{
		{Type: "x509pop", Value: "ca:fingerprint:00ff"},
		{Type: "x509pop", Value: "san:dns:web1.example.org"},
		{Type: "x509pop", Value: "subject:cn:web1"},
		{Type: "x509pop", Value: "subject:ou:web"},
	}
	plain := newAgent("/writ/agent/join_token/n1")
	requireNoError(t, "CreateAgent", s.CreateAgent(ctx, a))
	requireNoError(t, "CreateAgent", s.CreateAgent(ctx, plain))
	got, err := s.FetchAgent(ctx, a.SPIFFEID)
	requireNoError(t, "FetchAgent", err)
	requireAgent(t, "fetched with node selectors", a, got)
	got, err = s.FetchAgent(ctx, plain.SPIFFEID)
	requireNoError(t, "FetchAgent", err)
	if len(got.Selectors) != 0 {
		t.Fatalf("agent created without node selectors has %v", got.Selectors)
	}
	list, err := s.ListAgents(ctx)
	requireNoError(t, "ListAgents", err)
	requireAgents(t, "listed with node selectors", []*datastore.Agent{a, plain}, list)

	moved := []entry.Selector{{Type: "x509pop", Value: "subject:ou:db"}}
	returned, err := s.UpdateAgent(ctx, a.SPIFFEID, func(x *datastore.Agent) error {
		requireAgent(t, "passed to UpdateAgent's fn", a, x)
		x.Selectors = moved
		return nil
	})
	requireNoError(t, "UpdateAgent", err)
	want := *a
	want.Selectors = moved
	requireAgent(t, "returned by UpdateAgent", &want, returned)
	got, err = s.FetchAgent(ctx, a.SPIFFEID)
	requireNoError(t, "FetchAgent", err)
	requireAgent(t, "after replacing node selectors", &want, got)

	_, err = s.UpdateAgent(ctx, a.SPIFFEID, func(x *datastore.Agent) error { x.Selectors = nil; return nil })
	requireNoError(t, "UpdateAgent", err)
	got, err = s.FetchAgent(ctx, a.SPIFFEID)
	requireNoError(t, "FetchAgent", err)
	if len(got.Selectors) != 0 {
		t.Fatalf("node selectors after removing them: %v", got.Selectors)
	}
	want.Selectors = nil
	deleted, err := s.DeleteAgent(ctx, a.SPIFFEID)
	requireNoError(t, "DeleteAgent", err)
	requireAgent(t, "returned by DeleteAgent", &want, deleted)
}

func requireAgents(t testing.TB, what string, want, got []*datastore.Agent) {
	t.Helper()
	norm := func(as []*datastore.Agent) []*datastore.Agent {
		out := make([]*datastore.Agent, len(as))
		for i, a := range as {
			out[i] = normAgent(a)
		}
		slices.SortFunc(out, func(a, b *datastore.Agent) int { return strings.Compare(a.SPIFFEID.String(), b.SPIFFEID.String()) })
		return out
	}
	if w, g := norm(want), norm(got); !reflect.DeepEqual(w, g) {
		t.Fatalf("%s:\n got %+v\nwant %+v", what, g, w)
	}
}

func testJoinTokens(t *testing.T, newStore NewStoreFunc) {
	now := t0
	token := func(hash string, expiresAt time.Time) *datastore.JoinToken {
		return &datastore.JoinToken{
			Hash:      hash,
			SPIFFEID:  id("/agent/join/" + hash),
			ExpiresAt: expiresAt,
			CreatedAt: now.Add(-time.Hour),
		}
	}

	t.Run("consume once", func(t *testing.T) {
		s := newStore(t)
		ctx := t.Context()
		tok := token("h1", now.Add(time.Hour))
		requireNoError(t, "CreateJoinToken", s.CreateJoinToken(ctx, tok))
		requireErrorIs(t, "CreateJoinToken of a repeated hash",
			s.CreateJoinToken(ctx, token("h1", now.Add(2*time.Hour))), datastore.ErrAlreadyExists)

		got, err := s.ConsumeJoinToken(ctx, "h1", now)
		requireNoError(t, "ConsumeJoinToken", err)
		if !reflect.DeepEqual(normToken(got), normToken(tok)) {
			t.Fatalf("consumed token:\n got %+v\nwant %+v", got, tok)
		}
		_, err = s.ConsumeJoinToken(ctx, "h1", now)
		requireErrorIs(t, "second ConsumeJoinToken", err, datastore.ErrNotFound)
		_, err = s.ConsumeJoinToken(ctx, "unknown", now)
		requireErrorIs(t, "ConsumeJoinToken of an unknown hash", err, datastore.ErrNotFound)
		// A consumed hash can be stored again.
		requireNoError(t, "CreateJoinToken after consume", s.CreateJoinToken(ctx, token("h1", now.Add(time.Hour))))
	})

	t.Run("expired", func(t *testing.T) {
		for _, c := range []struct {
			name      string
			expiresAt time.Time
		}{
			{"long ago", now.Add(-time.Hour)},
			{"a second ago", now.Add(-time.Second)},
			{"expiring now", now},
		} {
			t.Run(c.name, func(t *testing.T) {
				s := newStore(t)
				requireNoError(t, "CreateJoinToken", s.CreateJoinToken(t.Context(), token("h", c.expiresAt)))
				_, err := s.ConsumeJoinToken(t.Context(), "h", now)
				requireErrorIs(t, "ConsumeJoinToken", err, datastore.ErrExpired)
				// It was removed all the same.
				_, err = s.ConsumeJoinToken(t.Context(), "h", c.expiresAt.Add(-time.Hour))
				requireErrorIs(t, "ConsumeJoinToken of an expired token again", err, datastore.ErrNotFound)
			})
		}
	})

	t.Run("prune", func(t *testing.T) {
		s := newStore(t)
		ctx := t.Context()
		for _, tok := range []*datastore.JoinToken{
			token("old", now.Add(-2*time.Hour)),
			token("recent", now.Add(-time.Second)),
			token("valid", now.Add(time.Hour)),
		} {
			requireNoError(t, "CreateJoinToken", s.CreateJoinToken(ctx, tok))
		}
		n, err := s.PruneJoinTokens(ctx, now)
		requireNoError(t, "PruneJoinTokens", err)
		if n != 2 {
			t.Errorf("PruneJoinTokens removed %d tokens, want 2", n)
		}
		for _, h := range []string{"old", "recent"} {
			_, err := s.ConsumeJoinToken(ctx, h, now.Add(-3*time.Hour))
			requireErrorIs(t, "ConsumeJoinToken of pruned token "+h, err, datastore.ErrNotFound)
		}
		n, err = s.PruneJoinTokens(ctx, now)
		requireNoError(t, "PruneJoinTokens", err)
		if n != 0 {
			t.Errorf("second PruneJoinTokens removed %d tokens, want 0", n)
		}
		if _, err := s.ConsumeJoinToken(ctx, "valid", now); err != nil {
			t.Errorf("ConsumeJoinToken of the unexpired token: %v", err)
		}
	})
}

func testConsumeJoinTokenRace(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	const racers = 32
	for round, c := range []struct {
		name      string
		expiresAt time.Time
		// want is the error of the one caller that finds the token.
		want error
	}{
		{"valid", t0.Add(time.Hour), nil},
		{"valid again", t0.Add(time.Hour), nil},
		{"expired", t0.Add(-time.Hour), datastore.ErrExpired},
	} {
		hash := fmt.Sprintf("race-%d", round)
		requireNoError(t, "CreateJoinToken", s.CreateJoinToken(t.Context(), &datastore.JoinToken{
			Hash: hash, SPIFFEID: id("/agent/race"), ExpiresAt: c.expiresAt, CreatedAt: t0,
		}))
		start := make(chan struct{})
		errs := make([]error, racers)
		var wg sync.WaitGroup
		for i := range racers {
			wg.Go(func() {
				<-start
				tok, err := s.ConsumeJoinToken(t.Context(), hash, t0)
				if err == nil && (tok == nil || tok.Hash != hash) {
					err = fmt.Errorf("returned token %+v", tok)
				}
				errs[i] = err
			})
		}
		close(start)
		wg.Wait()
		var winners int
		for i, err := range errs {
			switch {
			case errors.Is(err, datastore.ErrNotFound):
			case err == nil && c.want == nil, c.want != nil && errors.Is(err, c.want):
				winners++
			default:
				t.Errorf("%s: caller %d: unexpected result %v", c.name, i, err)
			}
		}
		if winners != 1 {
			t.Errorf("%s: %d of %d concurrent callers found the token, want exactly 1", c.name, winners, racers)
		}
	}
}

func testBundles(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	ctx := t.Context()

	_, err := s.FetchBundle(ctx, td)
	requireErrorIs(t, "FetchBundle of a new store", err, datastore.ErrNotFound)
	list, err := s.ListBundles(ctx)
	requireNoError(t, "ListBundles", err)
	if len(list) != 0 {
		t.Fatalf("new store lists bundles: %d", len(list))
	}

	// Create.
	want := newBundle(t, td)
	var calls int
	got, err := s.UpdateBundle(ctx, td, func(cur *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
		calls++
		if cur != nil {
			return nil, fmt.Errorf("fn got bundle %s, want nil for a new trust domain", describeBundle(cur))
		}
		return want.Clone(), nil
	})
	requireNoError(t, "UpdateBundle (create)", err)
	if calls == 0 {
		t.Fatal("UpdateBundle did not call fn")
	}
	requireBundle(t, "UpdateBundle result", want, got)
	fetched, err := s.FetchBundle(ctx, td)
	requireNoError(t, "FetchBundle", err)
	requireBundle(t, "fetched", want, fetched)

	// Update: fn sees the stored bundle and adds a key.
	newKey := newJWTKey(t)
	got, err = s.UpdateBundle(ctx, td, func(cur *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
		if !want.Equal(cur) {
			return nil, fmt.Errorf("fn got %s, want %s", describeBundle(cur), describeBundle(want))
		}
		if err := cur.AddJWTAuthority("kid-2", newKey); err != nil {
			return nil, err
		}
		cur.SetSequenceNumber(8)
		return cur, nil
	})
	requireNoError(t, "UpdateBundle", err)
	requireNoError(t, "AddJWTAuthority", want.AddJWTAuthority("kid-2", newKey))
	want.SetSequenceNumber(8)
	requireBundle(t, "UpdateBundle result", want, got)
	fetched, err = s.FetchBundle(ctx, td)
	requireNoError(t, "FetchBundle", err)
	requireBundle(t, "fetched after update", want, fetched)

	// A failing fn writes nothing, even if it changed its argument.
	rev := latestRevision(t, s)
	_, err = s.UpdateBundle(ctx, td, func(cur *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
		cur.RemoveJWTAuthority("kid-1")
		return cur, fmt.Errorf("fn failed: %w", errTest)
	})
	requireErrorIs(t, "UpdateBundle with failing fn", err, errTest)
	fetched, err = s.FetchBundle(ctx, td)
	requireNoError(t, "FetchBundle", err)
	requireBundle(t, "after failing fn", want, fetched)

	// A bundle is never stored under another trust domain.
	_, err = s.UpdateBundle(ctx, td, func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
		return newBundle(t, fedTD), nil
	})
	if err == nil {
		t.Fatal("UpdateBundle stored a bundle of another trust domain")
	}
	fetched, err = s.FetchBundle(ctx, td)
	requireNoError(t, "FetchBundle", err)
	requireBundle(t, "after fn returned another trust domain's bundle", want, fetched)
	if _, err := s.FetchBundle(ctx, fedTD); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("FetchBundle(%s) after a misdirected update: %v, want ErrNotFound", fedTD, err)
	}
	if evs := allEvents(t, s, rev); len(evs) != 0 {
		t.Errorf("failed updates logged events: %+v", evs)
	}

	// A second trust domain.
	fed := newBundle(t, fedTD)
	_, err = s.UpdateBundle(ctx, fedTD, func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error) { return fed, nil })
	requireNoError(t, "UpdateBundle (federated)", err)
	list, err = s.ListBundles(ctx)
	requireNoError(t, "ListBundles", err)
	requireBundles(t, "listed", []*spiffebundle.Bundle{want, fed}, list)

	// Delete.
	requireNoError(t, "DeleteBundle", s.DeleteBundle(ctx, fedTD))
	_, err = s.FetchBundle(ctx, fedTD)
	requireErrorIs(t, "FetchBundle after delete", err, datastore.ErrNotFound)
	requireErrorIs(t, "DeleteBundle again", s.DeleteBundle(ctx, fedTD), datastore.ErrNotFound)
	list, err = s.ListBundles(ctx)
	requireNoError(t, "ListBundles", err)
	requireBundles(t, "listed after delete", []*spiffebundle.Bundle{want}, list)
}

func requireBundles(t testing.TB, what string, want, got []*spiffebundle.Bundle) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %d bundles, want %d", what, len(got), len(want))
	}
	byTD := map[spiffeid.TrustDomain]*spiffebundle.Bundle{}
	for _, b := range got {
		byTD[b.TrustDomain()] = b
	}
	for _, w := range want {
		requireBundle(t, what+": "+w.TrustDomain().Name(), w, byTD[w.TrustDomain()])
	}
}

// testUpdateAgentConcurrent races a ban against renewals of the same
// agent: every renewal must be counted and the ban must survive them all.
func testUpdateAgentConcurrent(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	ctx := context.Background()
	a := newAgent("/agent/race")
	a.SerialNumber = "0"
	requireNoError(t, "CreateAgent", s.CreateAgent(ctx, a))
	const renewals = 32
	var wg sync.WaitGroup
	errc := make(chan error, renewals+1)
	for range renewals {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.UpdateAgent(ctx, a.SPIFFEID, func(a *datastore.Agent) error {
				n, err := strconv.Atoi(a.SerialNumber)
				if err != nil {
					return err
				}
				a.PrevSerialNumber, a.SerialNumber = a.SerialNumber, strconv.Itoa(n+1)
				return nil
			})
			errc <- err
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, err := s.UpdateAgent(ctx, a.SPIFFEID, func(a *datastore.Agent) error { a.Banned = true; return nil })
		errc <- err
	}()
	wg.Wait()
	close(errc)
	for err := range errc {
		requireNoError(t, "concurrent UpdateAgent", err)
	}
	got, err := s.FetchAgent(ctx, a.SPIFFEID)
	requireNoError(t, "FetchAgent", err)
	if !got.Banned {
		t.Error("a concurrent update undid the ban")
	}
	if got.SerialNumber != strconv.Itoa(renewals) {
		t.Errorf("serial %s after %d concurrent increments: updates were lost", got.SerialNumber, renewals)
	}
}

// testUpdateBundleConcurrent checks that concurrent read-modify-writes of
// one bundle lose nothing.
func testUpdateBundleConcurrent(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	const writers, perWriter = 16, 2
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
				_, err := s.UpdateBundle(t.Context(), td, func(cur *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
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
	b, err := s.FetchBundle(t.Context(), td)
	requireNoError(t, "FetchBundle", err)
	want := spiffebundle.FromJWTAuthorities(td, keys)
	requireBundle(t, "after concurrent updates", want, b)
}

func testCAKeys(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	ctx := t.Context()
	cert, _ := newCA(t, td)
	x509Key := &datastore.CAKey{
		ID: "x509-1", Kind: datastore.CAKeyX509, State: datastore.CAKeyActive, KeyType: "ec-p256", ServerID: "server-a",
		CertDER: cert.Raw, NotBefore: cert.NotBefore, NotAfter: cert.NotAfter,
	}
	jwtKey := &datastore.CAKey{
		ID: "jwt-1", Kind: datastore.CAKeyJWT, State: datastore.CAKeyTainted, KeyType: "ec-p256", ServerID: "server-b",
		PublicKeyDER: cert.RawSubjectPublicKeyInfo, NotBefore: t0, NotAfter: t0.Add(time.Hour),
		SignedUntil: t0.Add(time.Minute),
	}
	list, err := s.ListCAKeys(ctx)
	requireNoError(t, "ListCAKeys", err)
	if len(list) != 0 {
		t.Fatalf("new store lists CA keys: %+v", list)
	}
	requireNoError(t, "PutCAKey", s.PutCAKey(ctx, x509Key))
	requireNoError(t, "PutCAKey", s.PutCAKey(ctx, jwtKey))
	list, err = s.ListCAKeys(ctx)
	requireNoError(t, "ListCAKeys", err)
	requireCAKeys(t, "listed", []*datastore.CAKey{x509Key, jwtKey}, list)

	// Put replaces.
	retired := *x509Key
	retired.State = datastore.CAKeyRetired
	requireNoError(t, "PutCAKey (replace)", s.PutCAKey(ctx, &retired))
	list, err = s.ListCAKeys(ctx)
	requireNoError(t, "ListCAKeys", err)
	requireCAKeys(t, "listed after replace", []*datastore.CAKey{&retired, jwtKey}, list)

	requireNoError(t, "DeleteCAKey", s.DeleteCAKey(ctx, x509Key.ID))
	requireErrorIs(t, "DeleteCAKey again", s.DeleteCAKey(ctx, x509Key.ID), datastore.ErrNotFound)
	list, err = s.ListCAKeys(ctx)
	requireNoError(t, "ListCAKeys", err)
	requireCAKeys(t, "listed after delete", []*datastore.CAKey{jwtKey}, list)
}

func requireCAKeys(t testing.TB, what string, want, got []*datastore.CAKey) {
	t.Helper()
	norm := func(ks []*datastore.CAKey) []*datastore.CAKey {
		out := make([]*datastore.CAKey, len(ks))
		for i, k := range ks {
			out[i] = normCAKey(k)
		}
		slices.SortFunc(out, func(a, b *datastore.CAKey) int { return strings.Compare(a.ID, b.ID) })
		return out
	}
	if w, g := norm(want), norm(got); !reflect.DeepEqual(w, g) {
		t.Fatalf("%s:\n got %+v\nwant %+v", what, g, w)
	}
}
