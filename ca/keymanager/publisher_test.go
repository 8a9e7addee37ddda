package keymanager_test

import (
	"context"
	"crypto"
	"errors"
	"sync"
	"testing"
	"time"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/keymanager"
)

// upstreamPublisher self-signs CAs and records the JWT keys published to
// it, granting each at most grant of lifetime (or failing with err).
type upstreamPublisher struct {
	keymanager.SelfSigned
	grant time.Duration
	err   error

	mu        sync.Mutex // guards published
	published map[string]crypto.PublicKey
}

func (p *upstreamPublisher) PublishJWTKey(_ context.Context, id string, pub crypto.PublicKey, notAfter time.Time) (time.Time, error) {
	if p.err != nil {
		return time.Time{}, p.err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.published == nil {
		p.published = make(map[string]crypto.PublicKey)
	}
	p.published[id] = pub
	return notAfter.Add(-p.grant), nil
}

// TestJWTKeysPublishedUpstream: an Authority that is a JWTPublisher gets
// each new JWT key before it is recorded, and the key's lifetime is cut
// to what it grants; if publishing fails, no key is made.
func TestJWTKeysPublishedUpstream(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	cfg := e.config()
	pub := &upstreamPublisher{grant: time.Hour}
	cfg.Authority = pub
	m, err := keymanager.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	a := m.Active()
	got, ok := pub.published[a.JWT.ID]
	if !ok || !got.(interface{ Equal(crypto.PublicKey) bool }).Equal(a.JWT.Signer.Public()) {
		t.Fatal("the active JWT key was not published upstream")
	}
	want := e.clk.Now().Add(cfg.CATTL - time.Hour)
	if !a.JWTNotAfter.Equal(want) {
		t.Fatalf("JWT key valid until %s, want %s (cut to the upstream's grant)", a.JWTNotAfter, want)
	}
	keys, err := e.store.ListCAKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k.Kind == datastore.CAKeyJWT && !k.NotAfter.Equal(want) {
			t.Fatalf("JWT key record valid until %s, want %s", k.NotAfter, want)
		}
	}

	e2 := newEnv(t)
	cfg2 := e2.config()
	cfg2.Authority = &upstreamPublisher{err: errors.New("parent away")}
	if _, err := keymanager.New(ctx, cfg2); !errors.Is(err, keymanager.ErrAuthority) {
		t.Fatalf("publishing failed: %v, want ErrAuthority", err)
	}
	if keys, err := e2.store.ListCAKeys(ctx); err != nil || len(keys) != 1 || keys[0].Kind != datastore.CAKeyX509 {
		t.Fatalf("after a failed publication the records are %v (%v), want the X.509 CA only", keys, err)
	}
}
