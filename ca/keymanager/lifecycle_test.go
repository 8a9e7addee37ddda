package keymanager_test

import (
	"context"
	"encoding/hex"
	"errors"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/keymanager"
)

func keyInfo(t *testing.T, m *keymanager.Manager, kind datastore.CAKeyKind, id string) keymanager.KeyInfo {
	t.Helper()
	keys, err := m.Keys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k.Kind == kind && k.ID == id {
			return k
		}
	}
	t.Fatalf("no %s key %s", kind, id)
	return keymanager.KeyInfo{}
}

func activeX509ID(m *keymanager.Manager) string {
	return hex.EncodeToString(m.Active().X509.Cert.SubjectKeyId)
}

func TestPrepareActivate(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	m, err := keymanager.New(ctx, e.config())
	if err != nil {
		t.Fatal(err)
	}
	oldX509, oldJWT := activeX509ID(m), m.Active().JWT.ID
	seqBefore := seq(t, e.bundle(t))

	p, err := m.Prepare(ctx, datastore.CAKeyX509)
	if err != nil {
		t.Fatal(err)
	}
	if p.State != datastore.CAKeyPrepared || p.ServerID != "server-a" || len(p.ID) != 40 {
		t.Fatalf("prepared key = %+v", p)
	}
	b := e.bundle(t)
	if len(b.X509Authorities()) != 2 || seq(t, b) <= seqBefore {
		t.Fatalf("prepared key not published: %d authorities, sequence %d", len(b.X509Authorities()), seq(t, b))
	}
	if activeX509ID(m) != oldX509 {
		t.Fatal("a prepared key signs")
	}
	if _, err := m.Prepare(ctx, datastore.CAKeyX509); !errors.Is(err, keymanager.ErrKeyState) {
		t.Fatalf("second Prepare: %v, want ErrKeyState", err)
	}
	if _, err := m.Prepare(ctx, "rsa"); !errors.Is(err, keymanager.ErrKind) {
		t.Fatalf("Prepare of a bad kind: %v, want ErrKind", err)
	}

	// Just before the refresh hint has passed, it is too early.
	e.clk.Advance(keymanager.DefaultRefreshHint - 2*time.Second)
	if _, err := m.Activate(ctx, datastore.CAKeyX509, p.ID, false); !errors.Is(err, keymanager.ErrTooEarly) {
		t.Fatalf("early Activate: %v, want ErrTooEarly", err)
	}
	if _, err := m.Activate(ctx, datastore.CAKeyX509, "00ff", false); !errors.Is(err, keymanager.ErrUnknownKey) {
		t.Fatalf("Activate of an unknown key: %v, want ErrUnknownKey", err)
	}
	// PublishedSince errs a second late, against NotBefore's truncation.
	e.clk.Advance(3 * time.Second)
	a, err := m.Activate(ctx, datastore.CAKeyX509, p.ID, false)
	if err != nil {
		t.Fatal(err)
	}
	if a.State != datastore.CAKeyActive || activeX509ID(m) != p.ID {
		t.Fatalf("after Activate: state %s, signing with %s, want %s", a.State, activeX509ID(m), p.ID)
	}
	old := keyInfo(t, m, datastore.CAKeyX509, oldX509)
	if old.State != datastore.CAKeyRetired || !old.SignedUntil.Equal(e.clk.Now()) {
		t.Fatalf("old key = %+v, want retired, signed until now", old)
	}
	if _, err := m.Activate(ctx, datastore.CAKeyX509, oldX509, true); !errors.Is(err, keymanager.ErrKeyState) {
		t.Fatalf("Activate of a retired key: %v, want ErrKeyState", err)
	}

	// Forced activation skips the wait.
	pj, err := m.Prepare(ctx, datastore.CAKeyJWT)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Activate(ctx, datastore.CAKeyJWT, pj.ID, true); err != nil {
		t.Fatal(err)
	}
	if m.Active().JWT.ID != pj.ID || keyInfo(t, m, datastore.CAKeyJWT, oldJWT).State != datastore.CAKeyRetired {
		t.Fatal("forced JWT activation did not switch keys")
	}
}

func TestRotateTaintRevoke(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	m, err := keymanager.New(ctx, e.config())
	if err != nil {
		t.Fatal(err)
	}
	oldX509, oldJWT := activeX509ID(m), m.Active().JWT.ID
	oldCert := m.Active().X509.Cert
	var hookRan bool
	got, err := m.Rotate(ctx, func(context.Context) error {
		hookRan = true
		// The new keys are published, the old ones still sign.
		if activeX509ID(m) != oldX509 || len(e.bundle(t).X509Authorities()) != 2 {
			t.Error("new keys sign, or are not published, before activation")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !hookRan || len(got) != 2 || got[0].ID != activeX509ID(m) || got[1].ID != m.Active().JWT.ID || got[0].ID == oldX509 {
		t.Fatalf("Rotate returned %+v", got)
	}

	// The active key cannot be tainted or revoked.
	if _, err := m.Taint(ctx, datastore.CAKeyX509, activeX509ID(m)); !errors.Is(err, keymanager.ErrKeyState) {
		t.Fatalf("Taint of the active key: %v, want ErrKeyState", err)
	}
	if _, err := m.Revoke(ctx, datastore.CAKeyX509, oldX509, keymanager.RevokeOptions{Force: true}); !errors.Is(err, keymanager.ErrKeyState) {
		t.Fatalf("Revoke of an untainted key: %v, want ErrKeyState", err)
	}
	if _, err := m.Taint(ctx, datastore.CAKeyX509, "nope"); !errors.Is(err, keymanager.ErrUnknownKey) {
		t.Fatalf("Taint of an unknown key: %v, want ErrUnknownKey", err)
	}

	before := seq(t, e.bundle(t))
	k, err := m.Taint(ctx, datastore.CAKeyX509, oldX509)
	if err != nil {
		t.Fatal(err)
	}
	b := e.bundle(t)
	if k.State != datastore.CAKeyTainted || seq(t, b) != before+1 || !b.HasX509Authority(oldCert) {
		t.Fatalf("after Taint: state %s, sequence %d (was %d), still published %v", k.State, seq(t, b), before, b.HasX509Authority(oldCert))
	}

	ttl := time.Hour
	if _, err := m.Revoke(ctx, datastore.CAKeyX509, oldX509, keymanager.RevokeOptions{MaxX509SVIDTTL: ttl}); !errors.Is(err, keymanager.ErrTooEarly) {
		t.Fatalf("early Revoke: %v, want ErrTooEarly", err)
	}
	e.clk.Advance(ttl - time.Second)
	if _, err := m.Revoke(ctx, datastore.CAKeyX509, oldX509, keymanager.RevokeOptions{MaxX509SVIDTTL: ttl}); !errors.Is(err, keymanager.ErrTooEarly) {
		t.Fatalf("Revoke a second early: %v, want ErrTooEarly", err)
	}
	e.clk.Advance(time.Second)
	r, err := m.Revoke(ctx, datastore.CAKeyX509, oldX509, keymanager.RevokeOptions{MaxX509SVIDTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	if r.ID != oldX509 {
		t.Fatalf("revoked %s, want %s", r.ID, oldX509)
	}
	if e.bundle(t).HasX509Authority(oldCert) {
		t.Fatal("revoked CA still in the bundle")
	}
	if files := mustGlob(t, filepath.Join(e.dir, "keys", "*.pem")); len(files) != 3 {
		t.Fatalf("%d key files after revoking one of four, want 3", len(files))
	}
	if _, err := m.Revoke(ctx, datastore.CAKeyX509, oldX509, keymanager.RevokeOptions{Force: true}); !errors.Is(err, keymanager.ErrUnknownKey) {
		t.Fatalf("second Revoke: %v, want ErrUnknownKey", err)
	}

	// A JWT key can be revoked as soon as it is tainted.
	if _, err := m.Taint(ctx, datastore.CAKeyJWT, oldJWT); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Revoke(ctx, datastore.CAKeyJWT, oldJWT, keymanager.RevokeOptions{MaxX509SVIDTTL: ttl}); err != nil {
		t.Fatal(err)
	}
	if e.bundle(t).HasJWTAuthority(oldJWT) {
		t.Fatal("revoked JWT key still in the bundle")
	}

	// The scheduled rotation carries on and publishes neither again.
	m2, err := keymanager.New(ctx, e.config())
	if err != nil {
		t.Fatal(err)
	}
	if b := e.bundle(t); b.HasX509Authority(oldCert) || b.HasJWTAuthority(oldJWT) || m2.Active().JWT.ID != m.Active().JWT.ID {
		t.Fatal("a restart re-published a revoked key or changed the active keys")
	}
}

func TestOtherServersKeys(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	a, err := keymanager.New(ctx, e.config())
	if err != nil {
		t.Fatal(err)
	}
	b, err := keymanager.New(ctx, e.serverConfig("server-b", filepath.Join(e.dir, "keys-b")))
	if err != nil {
		t.Fatal(err)
	}
	p, err := b.Prepare(ctx, datastore.CAKeyX509)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Activate(ctx, datastore.CAKeyX509, p.ID, true); !errors.Is(err, keymanager.ErrNotOwner) {
		t.Fatalf("Activate of another server's key: %v, want ErrNotOwner", err)
	}
	if _, err := a.Taint(ctx, datastore.CAKeyX509, p.ID); !errors.Is(err, keymanager.ErrNotOwner) {
		t.Fatalf("Taint of another server's prepared key: %v, want ErrNotOwner", err)
	}
	// B's prepared key tainted through B never signed: revocable at once.
	if _, err := b.Taint(ctx, datastore.CAKeyX509, p.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Revoke(ctx, datastore.CAKeyX509, p.ID, keymanager.RevokeOptions{MaxX509SVIDTTL: time.Hour}); err != nil {
		t.Fatalf("Revoke through A of B's never-used tainted key: %v", err)
	}
	keys, err := a.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 4 {
		t.Fatalf("%d keys listed, want 4 (two active keys per server)", len(keys))
	}
}

// revokingStore runs revoke once, just before the first bundle update
// made through it.
type revokingStore struct {
	keymanager.Store
	revoke func()
}

func (s *revokingStore) UpdateBundle(ctx context.Context, td spiffeid.TrustDomain, fn func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error)) (*spiffebundle.Bundle, error) {
	if f := s.revoke; f != nil {
		s.revoke = nil
		f()
	}
	return s.Store.UpdateBundle(ctx, td, fn)
}

// A server that read a key's record before it was revoked, and publishes
// after the revocation removed the key from the bundle, must not leave it
// there.
func TestRevokeWhilePublishing(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	a, err := keymanager.New(ctx, e.config())
	if err != nil {
		t.Fatal(err)
	}
	old := activeX509ID(a)
	oldCert := a.Active().X509.Cert
	if _, err := a.Rotate(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Taint(ctx, datastore.CAKeyX509, old); err != nil {
		t.Fatal(err)
	}
	ran := false
	st := &revokingStore{Store: e.store, revoke: func() {
		ran = true
		if _, err := a.Revoke(ctx, datastore.CAKeyX509, old, keymanager.RevokeOptions{Force: true}); err != nil {
			t.Errorf("Revoke: %v", err)
		}
	}}
	cfg := e.serverConfig("server-b", filepath.Join(e.dir, "keys-b"))
	cfg.Store = st
	// B starts: it lists the records (the tainted key among them), then
	// prepares and publishes its own keys; the revocation lands between.
	if _, err := keymanager.New(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if !ran {
		t.Fatal("the revocation did not run")
	}
	if e.bundle(t).HasX509Authority(oldCert) {
		t.Fatal("a key revoked while another server published is back in the bundle")
	}
}

// signalHandler is a slog.Handler that closes ch at the first record
// with message msg.
type signalHandler struct {
	msg  string
	once sync.Once
	ch   chan struct{}
}

func (h *signalHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *signalHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.once.Do(func() { close(h.ch) })
	}
	return nil
}
func (h *signalHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *signalHandler) WithGroup(string) slog.Handler      { return h }

// A server learns, without waiting for its schedule, that one of its keys
// was revoked through another server, and destroys the private key.
func TestRunSeesRevokeByAnotherServer(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := newEnv(t)
	a, err := keymanager.New(ctx, e.config())
	if err != nil {
		t.Fatal(err)
	}
	h := &signalHandler{msg: "CA key destroyed: its record was removed", ch: make(chan struct{})}
	cfgB := e.serverConfig("server-b", filepath.Join(e.dir, "keys-b"))
	cfgB.Logger = slog.New(h)
	b, err := keymanager.New(ctx, cfgB)
	if err != nil {
		t.Fatal(err)
	}
	old := activeX509ID(b)
	if _, err := b.Rotate(ctx, nil); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	// Run has evaluated and armed its timer: from here only a store
	// change can wake it before the schedule.
	if err := e.clk.WaitForTimers(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Taint(ctx, datastore.CAKeyX509, old); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Revoke(ctx, datastore.CAKeyX509, old, keymanager.RevokeOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.ch:
	case <-time.After(10 * time.Second):
		t.Fatal("server B did not destroy its revoked key")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if files := mustGlob(t, filepath.Join(e.dir, "keys-b", "*.pem")); len(files) != 3 {
		t.Fatalf("server B holds %d keys, want 3", len(files))
	}
}
