package svidcache_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/entry"
)

func jwtSetup(t *testing.T) (*svidcache.Cache, *fakeclock.Clock, *jwtSigner, *entry.Entry) {
	clk := fakeclock.New(t0)
	ca := newTestCA(t, t0)
	e := newEntry(t, "/w", "unix:uid:1")
	s := &jwtSigner{ca: ca, clk: clk, ttl: 5 * time.Minute, ids: map[string]spiffeid.ID{e.ID: e.SPIFFEID}}
	c := newCache(t, clk, s)
	c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{e}, Bundle: ca.bundle})
	return c, clk, s, e
}

func TestJWTReusedUntilHalfLife(t *testing.T) {
	c, clk, s, e := jwtSetup(t)
	ctx := t.Context()
	first, err := c.FetchJWTSVID(ctx, e.ID, []string{"b", "a"})
	if err != nil {
		t.Fatal(err)
	}
	if first.ID != e.SPIFFEID || !first.ExpiresAt.Equal(t0.Add(5*time.Minute)) || !first.IssuedAt.Equal(t0) {
		t.Fatalf("JWT-SVID %+v", first)
	}
	// Same audience set in another order, with a duplicate: reused.
	again, err := c.FetchJWTSVID(ctx, e.ID, []string{"a", "b", "a"})
	if err != nil || again != first || s.calls.Load() != 1 {
		t.Fatalf("not reused: %v, calls %d", err, s.calls.Load())
	}
	// Just before half life: reused.
	clk.Set(t0.Add(150*time.Second - time.Nanosecond))
	if j, err := c.FetchJWTSVID(ctx, e.ID, []string{"a", "b"}); err != nil || j != first {
		t.Fatalf("not reused just before half life: %v", err)
	}
	// At half life: a new one.
	clk.Set(t0.Add(150 * time.Second))
	j, err := c.FetchJWTSVID(ctx, e.ID, []string{"a", "b"})
	if err != nil || j == first || s.calls.Load() != 2 {
		t.Fatalf("not renewed at half life: %v, calls %d", err, s.calls.Load())
	}
	// Another audience is another token.
	if _, err := c.FetchJWTSVID(ctx, e.ID, []string{"a"}); err != nil || s.calls.Load() != 3 {
		t.Fatalf("other audience: %v, calls %d", err, s.calls.Load())
	}
	if n := c.Stats().JWTSVIDs; n != 2 {
		t.Fatalf("JWTSVIDs = %d", n)
	}
	// Removing the entry drops its tokens.
	c.Apply(svidcache.Update{Deleted: []string{e.ID}})
	if n := c.Stats().JWTSVIDs; n != 0 {
		t.Fatalf("JWTSVIDs after removal = %d", n)
	}
	if _, err := c.FetchJWTSVID(ctx, e.ID, []string{"a"}); !errors.Is(err, svidcache.ErrUnknownEntry) {
		t.Fatalf("removed entry: %v", err)
	}
}

func TestJWTErrors(t *testing.T) {
	c, _, s, e := jwtSetup(t)
	ctx := t.Context()
	for _, aud := range [][]string{nil, {""}, {"a", ""}} {
		if _, err := c.FetchJWTSVID(ctx, e.ID, aud); !errors.Is(err, svidcache.ErrInvalidAudience) {
			t.Fatalf("audience %q: %v", aud, err)
		}
	}
	s.mu.Lock()
	s.err = fmt.Errorf("%w: server down", svidcache.ErrUnavailable)
	s.mu.Unlock()
	if _, err := c.FetchJWTSVID(ctx, e.ID, []string{"a"}); !errors.Is(err, svidcache.ErrUnavailable) {
		t.Fatalf("unavailable: %v", err)
	}
	s.mu.Lock()
	s.err = nil
	s.ids[e.ID] = spiffeid.RequireFromPath(td, "/someone-else")
	s.mu.Unlock()
	if _, err := c.FetchJWTSVID(ctx, e.ID, []string{"a"}); !errors.Is(err, svidcache.ErrInvalidJWT) {
		t.Fatalf("token for another ID: %v", err)
	}
	noSigner := newCache(t, fakeclock.New(t0), nil)
	noSigner.Apply(svidcache.Update{Entries: []*entry.Entry{e}})
	if _, err := noSigner.FetchJWTSVID(ctx, e.ID, []string{"a"}); !errors.Is(err, svidcache.ErrUnavailable) {
		t.Fatalf("no signer: %v", err)
	}
}

func TestJWTConcurrentFetchesShareOneCall(t *testing.T) {
	// In a bubble, so that synctest.Wait tells when every caller waits.
	synctest.Test(t, func(t *testing.T) {
		c, _, s, e := jwtSetup(t)
		gate := make(chan struct{})
		s.mu.Lock()
		s.gate = gate
		s.mu.Unlock()
		var wg sync.WaitGroup
		results := make([]*svidcache.JWTSVID, 20)
		for i := range results {
			wg.Go(func() {
				j, err := c.FetchJWTSVID(context.Background(), e.ID, []string{"a"})
				if err != nil {
					t.Error(err)
				}
				results[i] = j
			})
		}
		synctest.Wait() // one caller in the signer, held by the gate; the others waiting for it
		close(gate)
		wg.Wait()
		if n := s.calls.Load(); n != 1 {
			t.Fatalf("%d signing calls, want 1", n)
		}
		for _, j := range results {
			if j != results[0] {
				t.Fatal("callers got different tokens")
			}
		}
	})
}

func TestJWTCacheBounded(t *testing.T) {
	clk := fakeclock.New(t0)
	ca := newTestCA(t, t0)
	e := newEntry(t, "/w", "unix:uid:1")
	s := &jwtSigner{ca: ca, clk: clk, ttl: 5 * time.Minute, ids: map[string]spiffeid.ID{e.ID: e.SPIFFEID}}
	c, err := svidcache.New(svidcache.Config{TrustDomain: td, Clock: clk, JWTSigner: s, MaxJWTSVIDs: 50})
	if err != nil {
		t.Fatal(err)
	}
	c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{e}, Bundle: ca.bundle})
	for i := range 200 {
		if _, err := c.FetchJWTSVID(t.Context(), e.ID, []string{fmt.Sprint("aud-", i)}); err != nil {
			t.Fatal(err)
		}
		if n := c.Stats().JWTSVIDs; n > 50 {
			t.Fatalf("%d cached JWT-SVIDs, bound 50", n)
		}
	}
}
