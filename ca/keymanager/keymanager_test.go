package keymanager_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/datastore/boltstore"
	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/ca/keymanager/keystore"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

type env struct {
	dir   string
	store *boltstore.Store
	clk   *fakeclock.Clock
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	s, err := boltstore.Open(filepath.Join(dir, "db"), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &env{dir: dir, store: s, clk: fakeclock.New(t0)}
}

func (e *env) config() keymanager.Config {
	return e.serverConfig("server-a", filepath.Join(e.dir, "keys"))
}

// serverConfig configures server id with its keys in keyDir, on e's store.
func (e *env) serverConfig(id, keyDir string) keymanager.Config {
	ks, err := keystore.NewDisk(keyDir)
	if err != nil {
		panic(err)
	}
	return keymanager.Config{
		ServerID:    id,
		KeyStore:    ks,
		TrustDomain: td,
		KeyType:     "ec-p256",
		CATTL:       24 * time.Hour,
		Store:       e.store,
		Clock:       e.clk,
	}
}

func (e *env) bundle(t *testing.T) *spiffebundle.Bundle {
	t.Helper()
	b, err := e.store.FetchBundle(context.Background(), td)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func seq(t *testing.T, b *spiffebundle.Bundle) uint64 {
	n, ok := b.SequenceNumber()
	if !ok {
		t.Fatal("bundle has no sequence number")
	}
	return n
}

func TestFirstStartAndReload(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	m, err := keymanager.New(ctx, e.config())
	if err != nil {
		t.Fatal(err)
	}
	a := m.Active()
	if a.X509 == nil || a.JWT.Signer == nil || a.JWT.ID == "" {
		t.Fatalf("no active keys: %+v", a)
	}
	b := e.bundle(t)
	if len(b.X509Authorities()) != 1 || len(b.JWTAuthorities()) != 1 {
		t.Fatalf("bundle: %d X.509, %d JWT authorities", len(b.X509Authorities()), len(b.JWTAuthorities()))
	}
	if !b.HasX509Authority(a.X509.Cert) || !b.HasJWTAuthority(a.JWT.ID) {
		t.Fatal("active keys not in the bundle")
	}
	if hint, _ := b.RefreshHint(); hint != keymanager.DefaultRefreshHint {
		t.Errorf("refresh hint %s", hint)
	}
	for _, f := range mustGlob(t, filepath.Join(e.dir, "keys", "*.pem")) {
		if fi, _ := os.Stat(f); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %04o", f, fi.Mode().Perm())
		}
	}

	// A later start loads the same keys and leaves the bundle alone.
	m2, err := keymanager.New(ctx, e.config())
	if err != nil {
		t.Fatal(err)
	}
	if !m2.Active().X509.Cert.Equal(a.X509.Cert) || m2.Active().JWT.ID != a.JWT.ID {
		t.Fatal("reload made new keys")
	}
	if seq(t, e.bundle(t)) != seq(t, b) {
		t.Fatal("reload changed the bundle sequence")
	}
}

func mustGlob(t *testing.T, pattern string) []string {
	t.Helper()
	m, err := filepath.Glob(pattern)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestRotationSchedule steps the clock to just before and after each
// threshold: prepare at 1/2, activate at 5/6, drop the old key at expiry.
func TestRotationSchedule(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m, err := keymanager.New(ctx, e.config())
	if err != nil {
		t.Fatal(err)
	}
	first := m.Active()
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// advanceTo moves the clock once the loop has armed its timer, then
	// waits for the loop to re-arm (it has handled the tick).
	advanceTo := func(at time.Time) {
		t.Helper()
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		defer wcancel()
		if err := e.clk.WaitForTimers(wctx, 1); err != nil {
			t.Fatal("rotation loop armed no timer")
		}
		e.clk.Set(at)
		if err := e.clk.WaitForTimers(wctx, 1); err != nil {
			t.Fatal("rotation loop did not re-arm")
		}
	}
	life := first.X509.Cert.NotAfter.Sub(first.X509.Cert.NotBefore)
	prepareAt := first.X509.Cert.NotBefore.Add(life / 2)

	advanceTo(prepareAt.Add(-time.Second))
	if n := len(e.bundle(t).X509Authorities()); n != 1 {
		t.Fatalf("before half-life: %d authorities", n)
	}
	seqBefore := seq(t, e.bundle(t))

	advanceTo(prepareAt.Add(time.Second))
	b := e.bundle(t)
	if len(b.X509Authorities()) != 2 || len(b.JWTAuthorities()) != 2 {
		t.Fatalf("after half-life: %d X.509, %d JWT authorities, want 2 and 2", len(b.X509Authorities()), len(b.JWTAuthorities()))
	}
	if seq(t, b) <= seqBefore {
		t.Fatal("sequence did not grow")
	}
	if m.Active() != first && !m.Active().X509.Cert.Equal(first.X509.Cert) {
		t.Fatal("prepared key activated early")
	}

	activateAt := first.X509.Cert.NotAfter.Add(-life / 6)
	advanceTo(activateAt.Add(-time.Second))
	if !m.Active().X509.Cert.Equal(first.X509.Cert) {
		t.Fatal("activated before 1/6 of the lifetime remained")
	}
	advanceTo(activateAt.Add(time.Second))
	next := m.Active()
	if next.X509.Cert.Equal(first.X509.Cert) || next.JWT.ID == first.JWT.ID {
		t.Fatal("successor not activated")
	}
	b = e.bundle(t)
	if !b.HasX509Authority(first.X509.Cert) || !b.HasJWTAuthority(first.JWT.ID) {
		t.Fatal("retired key left the bundle before it expired")
	}
	if !b.HasX509Authority(next.X509.Cert) {
		t.Fatal("active key not in the bundle")
	}

	advanceTo(first.X509.Cert.NotAfter.Add(time.Second))
	b = e.bundle(t)
	if b.HasX509Authority(first.X509.Cert) || b.HasJWTAuthority(first.JWT.ID) {
		t.Fatal("expired key still in the bundle")
	}
	if !b.HasX509Authority(next.X509.Cert) || !b.HasJWTAuthority(next.JWT.ID) {
		t.Fatal("active key left the bundle")
	}
	keys, _ := e.store.ListCAKeys(ctx)
	files := mustGlob(t, filepath.Join(e.dir, "keys", "*.pem"))
	if len(keys) != len(files) || len(keys) != len(b.X509Authorities())+len(b.JWTAuthorities()) {
		t.Fatalf("%d key records, %d key files, %d+%d authorities: they must agree", len(keys), len(files), len(b.X509Authorities()), len(b.JWTAuthorities()))
	}
	for _, k := range keys {
		if k.ID == first.JWT.ID || k.NotAfter.Equal(first.X509.Cert.NotAfter) && k.Kind == datastore.CAKeyX509 {
			t.Fatalf("expired key %s still recorded", k.ID)
		}
	}
}

func TestRefusesInconsistentState(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		break_ func(t *testing.T, e *env)
	}{
		{"missing key file", func(t *testing.T, e *env) { os.Remove(mustGlob(t, filepath.Join(e.dir, "keys", "*.pem"))[0]) }},
		{"corrupt key file", func(t *testing.T, e *env) {
			os.WriteFile(mustGlob(t, filepath.Join(e.dir, "keys", "*.pem"))[0], []byte("not a key"), 0o600)
		}},
		{"swapped key file", func(t *testing.T, e *env) {
			f := mustGlob(t, filepath.Join(e.dir, "keys", "*.pem"))
			a, _ := os.ReadFile(f[0])
			b, _ := os.ReadFile(f[1])
			os.WriteFile(f[0], b, 0o600)
			os.WriteFile(f[1], a, 0o600)
		}},
		{"bundle without keys", func(t *testing.T, e *env) {
			keys, _ := e.store.ListCAKeys(ctx)
			for _, k := range keys {
				e.store.DeleteCAKey(ctx, k.ID)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			if _, err := keymanager.New(ctx, e.config()); err != nil {
				t.Fatal(err)
			}
			before := e.bundle(t)
			tc.break_(t, e)
			_, err := keymanager.New(ctx, e.config())
			if !errors.Is(err, keymanager.ErrInconsistent) {
				t.Fatalf("New = %v, want ErrInconsistent", err)
			}
			if !e.bundle(t).Equal(before) {
				t.Fatal("a refused start changed the bundle")
			}
		})
	}
}

func TestLooseKeyFileRefused(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := keymanager.New(ctx, e.config()); err != nil {
		t.Fatal(err)
	}
	os.Chmod(mustGlob(t, filepath.Join(e.dir, "keys", "*.pem"))[0], 0o644)
	if _, err := keymanager.New(ctx, e.config()); err == nil {
		t.Fatal("started with a 0644 key file")
	}
}

// TestInterruptedFirstStart: key files written but never recorded (a crash
// during the first start) are removed, and a first start proceeds.
func TestInterruptedFirstStart(t *testing.T) {
	e := newEnv(t)
	os.MkdirAll(filepath.Join(e.dir, "keys"), 0o700)
	orphan := filepath.Join(e.dir, "keys", "0123456789abcdef0123456789abcdef.pem")
	os.WriteFile(orphan, []byte("x"), 0o600)
	if _, err := keymanager.New(context.Background(), e.config()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Fatal("orphan key file kept")
	}
}

// TestExpiredWhileDown: a server started after its CA expired makes a new
// active CA at once instead of signing with an expired one.
func TestExpiredWhileDown(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	m, err := keymanager.New(ctx, e.config())
	if err != nil {
		t.Fatal(err)
	}
	old := m.Active()
	e.clk.Advance(48 * time.Hour)
	m, err = keymanager.New(ctx, e.config())
	if err != nil {
		t.Fatal(err)
	}
	if m.Active().X509.Cert.Equal(old.X509.Cert) || !m.Active().X509.Cert.NotAfter.After(e.clk.Now()) {
		t.Fatal("expired CA still active")
	}
	if e.bundle(t).HasX509Authority(old.X509.Cert) {
		t.Fatal("expired CA still in the bundle")
	}
}
