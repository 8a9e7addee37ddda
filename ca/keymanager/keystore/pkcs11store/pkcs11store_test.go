package pkcs11store_test

import (
	"context"
	"crypto/x509"
	"errors"
	"slices"
	"testing"

	"writ.dev/writ/ca/keymanager/keystore"
	"writ.dev/writ/ca/keymanager/keystore/pkcs11store"
	"writ.dev/writ/ca/keymanager/keystoretest"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/softhsmtest"
)

// open opens a store on tok. SoftHSM2 reads SOFTHSM2_CONF when the module
// is initialised, which happens when no store of this process is open.
func open(t *testing.T, tok *softhsmtest.Token) *pkcs11store.Store {
	t.Helper()
	t.Setenv("SOFTHSM2_CONF", tok.Conf)
	s, err := pkcs11store.Open(context.Background(), pkcs11store.Config{Module: tok.Module, TokenLabel: tok.Label, PIN: tok.PIN})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	keystoretest.Run(t, func(t *testing.T) keystoretest.Store { return open(t, softhsmtest.New(t)) })
}

// TestKeysStayInToken: keys survive closing and reopening the store (they
// live in the token), and another store on the token sees them.
func TestKeysStayInToken(t *testing.T) {
	ctx := context.Background()
	tok := softhsmtest.New(t)
	s := open(t, tok)
	id := keystoretest.ID(0)
	gen, err := s.Generate(ctx, id, x509ca.KeyTypeECP384)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	s = open(t, tok)
	loaded, err := s.Load(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := x509.MarshalPKIXPublicKey(gen.Public())
	b, _ := x509.MarshalPKIXPublicKey(loaded.Public())
	if !slices.Equal(a, b) {
		t.Fatal("the reopened token holds another key")
	}
	if ids, err := s.List(ctx); err != nil || !slices.Equal(ids, []string{id}) {
		t.Fatalf("List = %v, %v", ids, err)
	}
}

func TestOpenRefusals(t *testing.T) {
	tok := softhsmtest.New(t)
	t.Setenv("SOFTHSM2_CONF", tok.Conf)
	ctx := context.Background()
	for name, cfg := range map[string]pkcs11store.Config{
		"wrong PIN":     {Module: tok.Module, TokenLabel: tok.Label, PIN: "0000"},
		"unknown token": {Module: tok.Module, TokenLabel: "no-such-token", PIN: tok.PIN},
		"no module":     {Module: "/nonexistent/module.so", TokenLabel: tok.Label, PIN: tok.PIN},
		"empty":         {},
	} {
		s, err := pkcs11store.Open(ctx, cfg)
		if err == nil {
			s.Close()
		}
		if !errors.Is(err, pkcs11store.ErrToken) {
			t.Errorf("%s: Open = %v, want ErrToken", name, err)
		}
	}
	// Unknown IDs are keystore errors, not token errors.
	s := open(t, tok)
	if _, err := s.Load(ctx, keystoretest.ID(7)); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("Load of a missing key = %v", err)
	}
}
