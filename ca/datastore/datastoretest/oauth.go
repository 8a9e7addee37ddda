package datastoretest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

func testOAuthClients(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	ctx := t.Context()
	list, err := s.ListOAuthClients(ctx)
	requireNoError(t, "ListOAuthClients", err)
	if len(list) != 0 {
		t.Fatalf("new store lists OAuth clients: %+v", list)
	}
	_, err = s.FetchOAuthClient(ctx, id("/svc/none"))
	requireErrorIs(t, "FetchOAuthClient (unknown)", err, datastore.ErrNotFound)
	requireErrorIs(t, "DeleteOAuthClient (unknown)", s.DeleteOAuthClient(ctx, id("/svc/none")), datastore.ErrNotFound)

	web := &datastore.OAuthClient{SPIFFEID: id("/svc/web"), Audiences: []string{"https://api.example.org", "orders"},
		Scopes: []string{"orders:read", "orders:write"}, CreatedAt: t0, UpdatedAt: t0}
	batch := &datastore.OAuthClient{SPIFFEID: id("/svc/batch"), Audiences: []string{"reports"}, CreatedAt: t0, UpdatedAt: t0.Add(time.Minute)}
	requireNoError(t, "PutOAuthClient", s.PutOAuthClient(ctx, web))
	requireNoError(t, "PutOAuthClient", s.PutOAuthClient(ctx, batch))
	requireOAuthClients(t, s, "listed in SPIFFE ID order", batch, web)
	got, err := s.FetchOAuthClient(ctx, web.SPIFFEID)
	requireNoError(t, "FetchOAuthClient", err)
	requireOAuthClient(t, "fetched", web, got)

	// The returned client is a copy.
	got.Scopes[0] = "changed"
	got, err = s.FetchOAuthClient(ctx, web.SPIFFEID)
	requireNoError(t, "FetchOAuthClient", err)
	requireOAuthClient(t, "fetched after changing a returned copy", web, got)

	// Put replaces.
	changed := *web
	changed.Scopes = []string{"orders:read"}
	changed.UpdatedAt = t0.Add(time.Hour)
	requireNoError(t, "PutOAuthClient (replace)", s.PutOAuthClient(ctx, &changed))
	requireOAuthClients(t, s, "after a replace", batch, &changed)

	// Invalid clients are refused and change nothing.
	long := string(make([]byte, datastore.MaxOAuthValueLength+1))
	for name, bad := range map[string]*datastore.OAuthClient{
		"nil":                   nil,
		"no SPIFFE ID":          {Audiences: []string{"a"}},
		"no audience":           {SPIFFEID: web.SPIFFEID},
		"empty audience":        {SPIFFEID: web.SPIFFEID, Audiences: []string{""}},
		"audience with a space": {SPIFFEID: web.SPIFFEID, Audiences: []string{"a b"}},
		"audiences unsorted":    {SPIFFEID: web.SPIFFEID, Audiences: []string{"b", "a"}},
		"audiences repeated":    {SPIFFEID: web.SPIFFEID, Audiences: []string{"a", "a"}},
		"audience too long":     {SPIFFEID: web.SPIFFEID, Audiences: []string{long}},
		"scope with a quote":    {SPIFFEID: web.SPIFFEID, Audiences: []string{"a"}, Scopes: []string{`x"y`}},
		"scope with a control":  {SPIFFEID: web.SPIFFEID, Audiences: []string{"a"}, Scopes: []string{"x\ny"}},
		"scopes repeated":       {SPIFFEID: web.SPIFFEID, Audiences: []string{"a"}, Scopes: []string{"s", "s"}},
	} {
		requireErrorIs(t, "PutOAuthClient ("+name+")", s.PutOAuthClient(ctx, bad), entry.ErrInvalid)
	}
	requireOAuthClients(t, s, "after refused puts", batch, &changed)

	requireNoError(t, "DeleteOAuthClient", s.DeleteOAuthClient(ctx, batch.SPIFFEID))
	requireErrorIs(t, "DeleteOAuthClient (again)", s.DeleteOAuthClient(ctx, batch.SPIFFEID), datastore.ErrNotFound)
	_, err = s.FetchOAuthClient(ctx, batch.SPIFFEID)
	requireErrorIs(t, "FetchOAuthClient (deleted)", err, datastore.ErrNotFound)
	requireOAuthClients(t, s, "after a delete", &changed)
}

func requireOAuthClient(t testing.TB, what string, want, got *datastore.OAuthClient) {
	t.Helper()
	if got.SPIFFEID != want.SPIFFEID || !slices.Equal(got.Audiences, want.Audiences) || !slices.Equal(got.Scopes, want.Scopes) ||
		!got.CreatedAt.Equal(want.CreatedAt) || !got.UpdatedAt.Equal(want.UpdatedAt) {
		t.Fatalf("%s: OAuth client is %+v, want %+v", what, got, want)
	}
}

func requireOAuthClients(t testing.TB, s datastore.Store, what string, want ...*datastore.OAuthClient) {
	t.Helper()
	got, err := s.ListOAuthClients(t.Context())
	requireNoError(t, "ListOAuthClients", err)
	if len(got) != len(want) {
		t.Fatalf("%s: %d OAuth clients, want %d", what, len(got), len(want))
	}
	for i := range want {
		requireOAuthClient(t, fmt.Sprintf("%s: client %d", what, i), want[i], got[i])
	}
}

func testClientAssertions(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	ctx := t.Context()
	requireNoError(t, "UseClientAssertion", s.UseClientAssertion(ctx, "a1", t0.Add(time.Minute)))
	requireErrorIs(t, "UseClientAssertion (replayed)", s.UseClientAssertion(ctx, "a1", t0.Add(time.Minute)), datastore.ErrAlreadyExists)
	requireNoError(t, "UseClientAssertion", s.UseClientAssertion(ctx, "a2", t0.Add(time.Hour)))
	requireErrorIs(t, "UseClientAssertion (empty hash)", s.UseClientAssertion(ctx, "", t0.Add(time.Hour)), entry.ErrInvalid)

	n, err := s.PruneClientAssertions(ctx, t0)
	requireNoError(t, "PruneClientAssertions", err)
	if n != 0 {
		t.Fatalf("PruneClientAssertions before any expired removed %d", n)
	}
	// An assertion is remembered up to its expiry, inclusive of the
	// instant itself.
	n, err = s.PruneClientAssertions(ctx, t0.Add(time.Minute))
	requireNoError(t, "PruneClientAssertions", err)
	if n != 1 {
		t.Fatalf("PruneClientAssertions at a1's expiry removed %d, want 1", n)
	}
	requireErrorIs(t, "UseClientAssertion (a2 after pruning a1)", s.UseClientAssertion(ctx, "a2", t0.Add(time.Hour)), datastore.ErrAlreadyExists)
	requireNoError(t, "UseClientAssertion (a1 after it was pruned)", s.UseClientAssertion(ctx, "a1", t0.Add(2*time.Minute)))
}

// testUseClientAssertionRace: of concurrent callers with one hash,
// exactly one succeeds; the others get ErrAlreadyExists.
func testUseClientAssertionRace(t *testing.T, a, b datastore.Store) {
	const assertions, racersPerHandle = 5, 8
	for k := range assertions {
		hash := fmt.Sprintf("race-%d", k)
		start := make(chan struct{})
		errs := make([]error, 2*racersPerHandle)
		var wg sync.WaitGroup
		for i := range errs {
			wg.Go(func() {
				<-start
				errs[i] = pick(i, a, b).UseClientAssertion(t.Context(), hash, t0.Add(time.Minute))
			})
		}
		close(start)
		wg.Wait()
		winners := 0
		for i, err := range errs {
			switch {
			case err == nil:
				winners++
			case !errors.Is(err, datastore.ErrAlreadyExists):
				t.Errorf("assertion %d: caller %d: %v", k, i, err)
			}
		}
		if winners != 1 {
			t.Errorf("assertion %d: %d of %d concurrent callers used it, want exactly 1", k, winners, len(errs))
		}
	}
}

func testRevocations(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	ctx := t.Context()
	list, err := s.ListRevocations(ctx, t0)
	requireNoError(t, "ListRevocations", err)
	if len(list) != 0 {
		t.Fatalf("new store lists revocations: %+v", list)
	}
	watch, stop := s.Watch()
	defer stop()
	drain(watch)
	evs, err := s.Events(ctx, 0, 0)
	requireNoError(t, "Events", err)
	var last uint64
	if len(evs) > 0 {
		last = evs[len(evs)-1].Revision
	}

	byJTI := &datastore.Revocation{JTI: "tok-1", RevokedAt: t0, ExpiresAt: t0.Add(5 * time.Minute)}
	client := spiffeid.RequireFromPath(td, "/svc/web").String()
	byClient := &datastore.Revocation{ClientID: client, RevokedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	requireNoError(t, "PutRevocation (jti)", s.PutRevocation(ctx, byJTI))
	waitSignal(t, "watch after PutRevocation", watch)
	requireNoError(t, "PutRevocation (client)", s.PutRevocation(ctx, byClient))

	evs, err = s.Events(ctx, last, 0)
	requireNoError(t, "Events", err)
	if len(evs) != 2 || evs[0].Kind != datastore.EventRevocation || evs[0].Key != "jti:tok-1" || evs[0].Entry != nil ||
		evs[1].Kind != datastore.EventRevocation || evs[1].Key != "client:"+client || evs[1].Revision <= evs[0].Revision {
		t.Fatalf("events after two revocations: %+v", evs)
	}
	if datastore.RevocationKey(byJTI) != evs[0].Key || datastore.RevocationKey(byClient) != evs[1].Key {
		t.Fatalf("RevocationKey disagrees with the event keys %q, %q", evs[0].Key, evs[1].Key)
	}
	requireRevocations(t, s, t0, "both in key order", byClient, byJTI)
	requireRevocations(t, s, t0.Add(5*time.Minute), "at the JTI revocation's expiry", byClient)

	// A revocation with the same key replaces the old one and logs an
	// event again.
	later := &datastore.Revocation{ClientID: client, RevokedAt: t0.Add(time.Minute), ExpiresAt: t0.Add(2 * time.Hour)}
	requireNoError(t, "PutRevocation (replace)", s.PutRevocation(ctx, later))
	requireRevocations(t, s, t0, "after a replace", later, byJTI)
	evs, err = s.Events(ctx, last, 0)
	requireNoError(t, "Events", err)
	if len(evs) != 3 || evs[2].Kind != datastore.EventRevocation || evs[2].Key != "client:"+client {
		t.Fatalf("events after a replaced revocation: %+v", evs)
	}

	for name, bad := range map[string]*datastore.Revocation{
		"nil":                  nil,
		"neither set":          {ExpiresAt: t0},
		"both set":             {JTI: "x", ClientID: client, ExpiresAt: t0},
		"client not an ID":     {ClientID: "web", ExpiresAt: t0},
		"JTI with a space":     {JTI: "a b", ExpiresAt: t0},
		"no expiry":            {JTI: "x"},
		"client ID with slash": {ClientID: "spiffe://example.org/", ExpiresAt: t0},
	} {
		requireErrorIs(t, "PutRevocation ("+name+")", s.PutRevocation(ctx, bad), entry.ErrInvalid)
	}

	n, err := s.PruneRevocations(ctx, t0.Add(time.Hour))
	requireNoError(t, "PruneRevocations", err)
	if n != 1 {
		t.Fatalf("PruneRevocations removed %d, want 1", n)
	}
	requireRevocations(t, s, t0, "after pruning", later)
	n, err = s.PruneRevocations(ctx, t0.Add(time.Hour))
	requireNoError(t, "PruneRevocations (again)", err)
	if n != 0 {
		t.Fatalf("PruneRevocations again removed %d, want 0", n)
	}
}

func requireRevocations(t testing.TB, s datastore.Store, now time.Time, what string, want ...*datastore.Revocation) {
	t.Helper()
	got, err := s.ListRevocations(t.Context(), now)
	requireNoError(t, "ListRevocations", err)
	if len(got) != len(want) {
		t.Fatalf("%s: %d revocations, want %d: %+v", what, len(got), len(want), got)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.JTI != w.JTI || g.ClientID != w.ClientID || !g.RevokedAt.Equal(w.RevokedAt) || !g.ExpiresAt.Equal(w.ExpiresAt) {
			t.Fatalf("%s: revocation %d is %+v, want %+v", what, i, g, w)
		}
	}
}

// testRevocationSeenByOther: a revocation stored through one handle wakes
// the other's watchers, which then find it in Events and ListRevocations.
func testRevocationSeenByOther(t *testing.T, a, b datastore.Store) {
	ctx := t.Context()
	watch, stop := b.Watch()
	defer stop()
	drain(watch)
	r := &datastore.Revocation{JTI: "across", RevokedAt: t0, ExpiresAt: t0.Add(time.Minute)}
	requireNoError(t, "PutRevocation", a.PutRevocation(ctx, r))
	for deadline := time.Now().Add(waitTimeout); ; {
		waitSignal(t, "the other handle's watch after PutRevocation", watch)
		evs, err := b.Events(ctx, 0, 0)
		requireNoError(t, "Events", err)
		if len(evs) > 0 && evs[len(evs)-1].Kind == datastore.EventRevocation && evs[len(evs)-1].Key == "jti:across" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the other handle's events lack the revocation: %+v", evs)
		}
	}
	requireRevocations(t, b, t0, "through the other handle", r)
}
