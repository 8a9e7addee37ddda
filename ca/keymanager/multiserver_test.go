package keymanager_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"writ.dev/writ/ca/datastore"
	wjwt "writ.dev/writ/ca/jwtsvid"
	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/ca/keymanager/keystore"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/testca"
)

// signSVID signs an X.509-SVID with the active CA of m and returns the
// chain as sent (leaf first, no root).
func signSVID(t *testing.T, a *keymanager.Active, now time.Time) [][]byte {
	t.Helper()
	key, err := x509ca.GenerateKey("ec-p256")
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509ca.SignX509SVID(now, a.X509, x509ca.SVIDParams{ID: spiffeid.RequireFromPath(td, "/workload"), TTL: time.Hour, PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	return a.X509.SVIDChain(der)
}

// TestServersShareOneStore: two servers with their own key directories
// start at once on one empty datastore (the same *Store value: one shared
// database). Each makes and activates its own keys; the one bundle holds
// both servers' authorities, so what either signs verifies everywhere.
func TestServersShareOneStore(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	cfgA := e.serverConfig("server-a", filepath.Join(e.dir, "a", "keys"))
	cfgB := e.serverConfig("server-b", filepath.Join(e.dir, "b", "keys"))
	var a, b *keymanager.Manager
	var errA, errB error
	var wg sync.WaitGroup
	wg.Go(func() { a, errA = keymanager.New(ctx, cfgA) })
	wg.Go(func() { b, errB = keymanager.New(ctx, cfgB) })
	wg.Wait()
	if errA != nil || errB != nil {
		t.Fatalf("start: %v, %v", errA, errB)
	}
	actA, actB := a.Active(), b.Active()
	if actA.X509.Cert.Equal(actB.X509.Cert) || actA.JWT.ID == actB.JWT.ID {
		t.Fatal("the servers share a key")
	}
	bundle := e.bundle(t)
	if len(bundle.X509Authorities()) != 2 || len(bundle.JWTAuthorities()) != 2 {
		t.Fatalf("bundle: %d X.509, %d JWT authorities, want 2 and 2", len(bundle.X509Authorities()), len(bundle.JWTAuthorities()))
	}
	for _, act := range []*keymanager.Active{actA, actB} {
		if !bundle.HasX509Authority(act.X509.Cert) || !bundle.HasJWTAuthority(act.JWT.ID) {
			t.Fatal("an active key is not in the shared bundle")
		}
	}
	records, err := e.store.ListCAKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	owners := map[string]int{}
	for _, r := range records {
		owners[r.ServerID]++
		if r.State != datastore.CAKeyActive {
			t.Errorf("key %s of %s is %s", r.ID, r.ServerID, r.State)
		}
	}
	if owners["server-a"] != 2 || owners["server-b"] != 2 || len(owners) != 2 {
		t.Fatalf("key owners %v", owners)
	}
	// Each server holds its own two private keys.
	for _, ks := range []keymanager.KeyStore{cfgA.KeyStore, cfgB.KeyStore} {
		if ids, err := ks.List(ctx); err != nil || len(ids) != 2 {
			t.Fatalf("a server holds %d keys (%v), want 2", len(ids), err)
		}
	}

	// An SVID signed by A verifies with the bundle B sees.
	now := e.clk.Now()
	chain := signSVID(t, actA, now)
	seenByB, err := cfgB.Store.FetchBundle(ctx, td)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.ParseAndVerify(chain, seenByB, x509svid.WithTime(now)); err != nil {
		t.Fatalf("B's bundle refuses A's SVID: %v", err)
	}
	tok, _, err := wjwt.Sign(now, actA.JWT, spiffeid.RequireFromPath(td, "/workload"), []string{"aud"}, time.Minute, actA.JWTNotAfter)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wjwt.Validate(tok, seenByB, []string{"aud"}, now); err != nil {
		t.Fatalf("B's bundle refuses A's JWT-SVID: %v", err)
	}

	// A restarts with its keys; B's keys, whose files A does not have, do
	// not stop it.
	a2, err := keymanager.New(ctx, e.serverConfig("server-a", filepath.Join(e.dir, "a", "keys")))
	if err != nil {
		t.Fatalf("restart of A: %v", err)
	}
	if !a2.Active().X509.Cert.Equal(actA.X509.Cert) || a2.Active().JWT.ID != actA.JWT.ID {
		t.Fatal("A's restart made new keys")
	}
	if !e.bundle(t).Equal(bundle) {
		t.Fatal("A's restart changed the bundle")
	}
	if ids, _ := cfgB.KeyStore.List(ctx); len(ids) != 2 {
		t.Fatal("A's restart touched B's keys")
	}
}

// TestOwnKeysOnly: a key file whose record names
// another server (a copied data directory) is left alone; a server whose
// own key file is missing still refuses to start.
func TestOwnKeysOnly(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	dirA, dirB := filepath.Join(e.dir, "a"), filepath.Join(e.dir, "b")
	if _, err := keymanager.New(ctx, e.serverConfig("server-a", dirA)); err != nil {
		t.Fatal(err)
	}
	if _, err := keymanager.New(ctx, e.serverConfig("server-b", dirB)); err != nil {
		t.Fatal(err)
	}
	// A copy of one of B's key files in A's directory is not A's to delete.
	bFiles := mustGlob(t, filepath.Join(dirB, "*.pem"))
	data, _ := os.ReadFile(bFiles[0])
	copied := filepath.Join(dirA, filepath.Base(bFiles[0]))
	if err := os.WriteFile(copied, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := keymanager.New(ctx, e.serverConfig("server-a", dirA)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(copied); err != nil {
		t.Fatal("A removed a key file the datastore says is B's")
	}
	// B's own key missing: B refuses, A does not care.
	os.Remove(bFiles[0])
	if _, err := keymanager.New(ctx, e.serverConfig("server-b", dirB)); !errors.Is(err, keymanager.ErrInconsistent) {
		t.Fatalf("B without its key file = %v, want ErrInconsistent", err)
	}
	os.Remove(copied)
	if _, err := keymanager.New(ctx, e.serverConfig("server-a", dirA)); err != nil {
		t.Fatalf("A refused over B's missing key file: %v", err)
	}
}

// TestDepartedServerPruned: a server that left for good drops out of the
// bundle, and its records out of the datastore, once its keys expire;
// the server that remains does the pruning.
func TestDepartedServerPruned(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	b, err := keymanager.New(ctx, e.serverConfig("server-b", filepath.Join(e.dir, "b")))
	if err != nil {
		t.Fatal(err)
	}
	gone := b.Active()
	e.clk.Advance(time.Hour)
	cfgA := e.serverConfig("server-a", filepath.Join(e.dir, "a"))
	a, err := keymanager.New(ctx, cfgA)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- a.Run(runCtx) }()
	defer func() { cancel(); <-done }()

	// B never runs again. A wakes when B's keys expire.
	advanceTo(t, e, gone.X509.Cert.NotAfter.Add(-time.Second))
	if bundle := e.bundle(t); !bundle.HasX509Authority(gone.X509.Cert) || !bundle.HasJWTAuthority(gone.JWT.ID) {
		t.Fatal("B's keys left the bundle before they expired")
	}
	advanceTo(t, e, gone.X509.Cert.NotAfter.Add(time.Second))
	bundle := e.bundle(t)
	if bundle.HasX509Authority(gone.X509.Cert) || bundle.HasJWTAuthority(gone.JWT.ID) {
		t.Fatal("expired keys of a departed server still in the bundle")
	}
	if !bundle.HasX509Authority(a.Active().X509.Cert) || !bundle.HasJWTAuthority(a.Active().JWT.ID) {
		t.Fatal("A's keys left the bundle")
	}
	records, _ := e.store.ListCAKeys(ctx)
	for _, r := range records {
		if r.ServerID == "server-b" {
			t.Fatalf("departed server's record %s kept", r.ID)
		}
	}
}

// advanceTo moves e's clock to at once a rotation loop has armed its
// timer, then waits for the loop to re-arm (it has handled the tick).
func advanceTo(t *testing.T, e *env, at time.Time) {
	t.Helper()
	wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.clk.WaitForTimers(wctx, 1); err != nil {
		t.Fatal("rotation loop armed no timer")
	}
	e.clk.Set(at)
	if err := e.clk.WaitForTimers(wctx, 1); err != nil {
		t.Fatal("rotation loop did not re-arm")
	}
}

// TestUpstreamChain: with an authority that signs each CA under a root,
// the bundle holds only the root, and an SVID sent with its chain
// verifies against it, also after a restart and a rotation.
func TestUpstreamChain(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	rootCA := testca.New(t, td, t0, 365*24*time.Hour)
	root := rootCA.Cert
	cfg := func() keymanager.Config {
		c := e.config()
		c.Authority = &keymanager.Upstream{Issuer: rootCA.Issuer(), Roots: []*x509.Certificate{root}}
		return c
	}
	m, err := keymanager.New(ctx, cfg())
	if err != nil {
		t.Fatal(err)
	}
	check := func(m *keymanager.Manager) {
		t.Helper()
		bundle := e.bundle(t)
		if len(bundle.X509Authorities()) != 1 || !bundle.X509Authorities()[0].Equal(root) {
			t.Fatalf("bundle holds %d X.509 authorities, want the root only", len(bundle.X509Authorities()))
		}
		iss := m.Active().X509
		if len(iss.Chain) != 1 || !iss.Chain[0].Equal(iss.Cert) {
			t.Fatal("issuer chain is not the CA certificate")
		}
		now := e.clk.Now()
		chain := signSVID(t, m.Active(), now)
		if len(chain) != 2 {
			t.Fatalf("SVID chain of %d certificates, want leaf and CA", len(chain))
		}
		rootsOnly := x509bundle.FromX509Authorities(td, []*x509.Certificate{root})
		if _, _, err := x509svid.ParseAndVerify(chain, rootsOnly, x509svid.WithTime(now)); err != nil {
			t.Fatalf("go-spiffe refuses the chain: %v", err)
		}
	}
	check(m)
	first := m.Active().X509.Cert
	m, err = keymanager.New(ctx, cfg())
	if err != nil {
		t.Fatal(err)
	}
	if !m.Active().X509.Cert.Equal(first) {
		t.Fatal("restart made a new CA")
	}
	check(m)
	// Past the first CA's expiry: a new CA under the same root.
	e.clk.Set(first.NotAfter.Add(time.Second))
	if m, err = keymanager.New(ctx, cfg()); err != nil {
		t.Fatal(err)
	}
	if m.Active().X509.Cert.Equal(first) {
		t.Fatal("expired CA still active")
	}
	check(m)
}

// TestMemoryKeyStore: a server on the in-memory key store runs; its
// keys are gone with the process, so a new process on the same datastore
// refuses to start rather than sign with a CA no one trusts.
func TestMemoryKeyStore(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	cfg := e.config()
	cfg.KeyStore = keystore.NewMemory()
	m, err := keymanager.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if m.Active().X509 == nil {
		t.Fatal("no active CA")
	}
	if mustGlob(t, filepath.Join(e.dir, "keys", "*.pem")) != nil {
		t.Fatal("the memory store wrote key files")
	}
	cfg.KeyStore = keystore.NewMemory()
	if _, err := keymanager.New(ctx, cfg); !errors.Is(err, keymanager.ErrInconsistent) {
		t.Fatalf("restart without the keys = %v, want ErrInconsistent", err)
	}
}

// TestVolatileRestart: with Volatile set, a new process on the in-memory
// key store makes a new CA; the lost keys never sign again, stay in the
// bundle (X.509 and JWT) until they expire, and are then dropped.
func TestVolatileRestart(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	cfg := e.config()
	cfg.KeyStore = keystore.NewMemory()
	cfg.Volatile = true
	m1, err := keymanager.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	old := m1.Active()
	// A leaf signed before the restart.
	e.clk.Advance(time.Hour)
	leaf := signSVID(t, old, e.clk.Now())

	cfg.KeyStore = keystore.NewMemory()
	m2, err := keymanager.New(ctx, cfg)
	if err != nil {
		t.Fatalf("restart on a volatile key store: %v", err)
	}
	cur := m2.Active()
	if cur.X509.Cert.Equal(old.X509.Cert) || cur.JWT.ID == old.JWT.ID {
		t.Fatal("restart kept signing with the lost keys")
	}
	b := e.bundle(t)
	if !b.HasX509Authority(old.X509.Cert) || !b.HasJWTAuthority(old.JWT.ID) {
		t.Fatal("lost keys left the bundle before expiring")
	}
	if !b.HasX509Authority(cur.X509.Cert) || !b.HasJWTAuthority(cur.JWT.ID) {
		t.Fatal("new keys not published")
	}
	certs := make([]*x509.Certificate, len(leaf))
	for i, der := range leaf {
		if certs[i], err = x509.ParseCertificate(der); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := x509ca.VerifyX509SVID(certs, b.X509Authorities(), e.clk.Now()); err != nil {
		t.Fatalf("SVID signed before the restart no longer verifies: %v", err)
	}
	records, err := e.store.ListCAKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(records) != 4 {
		t.Fatalf("%d CA key records, want the 2 lost and the 2 new", len(records))
	}
	for _, r := range records {
		isNew := r.ID == cur.JWT.ID || r.Kind == datastore.CAKeyX509 && bytes.HasPrefix(r.CertDER, cur.X509.Cert.Raw)
		if !isNew && r.State != datastore.CAKeyRetired {
			t.Fatalf("lost key %s is %s, want retired", r.ID, r.State)
		}
	}

	// Once the lost keys expire, the running manager drops them.
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m2.Run(runCtx) }()
	t.Cleanup(func() { cancel(); <-done })
	advanceTo(t, e, old.X509.Cert.NotAfter.Add(time.Second))
	b = e.bundle(t)
	if b.HasX509Authority(old.X509.Cert) || b.HasJWTAuthority(old.JWT.ID) {
		t.Fatal("expired lost keys still published")
	}
	if !b.HasX509Authority(m2.Active().X509.Cert) {
		t.Fatal("active CA not published")
	}
}
