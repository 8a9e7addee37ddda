package keymanager_test

import (
	"context"
	"crypto/x509"
	"errors"
	"path/filepath"
	"testing"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/ca/x509ca"
)

// TestTaintedKeyReplaced: a tainted active key stops signing; a new key
// signs, and the tainted one stays published.
func TestTaintedKeyReplaced(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	m, err := keymanager.New(ctx, e.config())
	if err != nil {
		t.Fatal(err)
	}
	old := m.Active()
	records, _ := e.store.ListCAKeys(ctx)
	for _, r := range records {
		r.State = datastore.CAKeyTainted
		if err := e.store.PutCAKey(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	m, err = keymanager.New(ctx, e.config())
	if err != nil {
		t.Fatal(err)
	}
	now := m.Active()
	if now.X509.Cert.Equal(old.X509.Cert) || now.JWT.ID == old.JWT.ID {
		t.Fatal("a tainted key still signs")
	}
	b := e.bundle(t)
	if !b.HasX509Authority(old.X509.Cert) || !b.HasJWTAuthority(old.JWT.ID) {
		t.Fatal("tainted keys left the bundle before they were removed")
	}
	if !b.HasX509Authority(now.X509.Cert) || !b.HasJWTAuthority(now.JWT.ID) {
		t.Fatal("new keys not in the bundle")
	}
	records, _ = e.store.ListCAKeys(ctx)
	tainted := 0
	for _, r := range records {
		if r.State == datastore.CAKeyTainted {
			tainted++
		}
	}
	if tainted != 2 || len(records) != 4 {
		t.Fatalf("%d records, %d tainted; want 4, 2", len(records), tainted)
	}
}

// TestUnownedRecordsAdopted: records written before keys had owners
// belong to the server that holds their keys.
func TestUnownedRecordsAdopted(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	m, err := keymanager.New(ctx, e.config())
	if err != nil {
		t.Fatal(err)
	}
	old := m.Active()
	records, _ := e.store.ListCAKeys(ctx)
	for _, r := range records {
		r.ServerID = ""
		e.store.PutCAKey(ctx, r)
	}
	if m, err = keymanager.New(ctx, e.config()); err != nil {
		t.Fatal(err)
	}
	if !m.Active().X509.Cert.Equal(old.X509.Cert) || m.Active().JWT.ID != old.JWT.ID {
		t.Fatal("unowned keys not adopted")
	}
	records, _ = e.store.ListCAKeys(ctx)
	for _, r := range records {
		if r.ServerID != "server-a" {
			t.Fatalf("record %s owned by %q", r.ID, r.ServerID)
		}
	}
}

// badAuthority returns a CA certificate for a key other than the one it
// was asked to certify.
type badAuthority struct{}

func (badAuthority) MintCA(ctx context.Context, req keymanager.CARequest) (*keymanager.CA, error) {
	other, err := x509ca.GenerateKey("ec-p256")
	if err != nil {
		return nil, err
	}
	cert, err := x509ca.NewSelfSignedCA(req.Now, req.TrustDomain, other, req.TTL)
	if err != nil {
		return nil, err
	}
	return &keymanager.CA{Cert: cert, TrustAnchors: []*x509.Certificate{cert}}, nil
}

// TestAuthorityChecked: a CA certificate for the wrong key is refused
// before anything is recorded, and the new key is destroyed.
func TestAuthorityChecked(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	cfg := e.config()
	cfg.Authority = badAuthority{}
	if _, err := keymanager.New(ctx, cfg); !errors.Is(err, keymanager.ErrAuthority) {
		t.Fatalf("New = %v, want ErrAuthority", err)
	}
	records, _ := e.store.ListCAKeys(ctx)
	for _, r := range records {
		if r.Kind == datastore.CAKeyX509 {
			t.Fatal("a refused CA certificate was recorded")
		}
	}
	// The JWT key, prepared first or not, is recorded and has its file;
	// no file is left without a record.
	files := mustGlob(t, filepath.Join(e.dir, "keys", "*.pem"))
	if len(files) != len(records) {
		t.Fatalf("%d key files, %d records", len(files), len(records))
	}
}
