package keystoretest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"writ.dev/writ/ca/keymanager/keystore"
	"writ.dev/writ/ca/x509ca"
)

// Store is the key store interface under test: the method set the key
// manager uses.
type Store interface {
	Generate(ctx context.Context, id, keyType string) (crypto.Signer, error)
	Load(ctx context.Context, id string) (crypto.Signer, error)
	Delete(ctx context.Context, id string) error
	List(ctx context.Context) ([]string, error)
}

// Run runs the conformance suite; newStore returns a new, empty store.
func Run(t *testing.T, newStore func(t *testing.T) Store) {
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, s Store)
	}{
		{"GenerateLoadSign", testGenerateLoadSign},
		{"GenerateExisting", testGenerateExisting},
		{"Missing", testMissing},
		{"Delete", testDelete},
		{"List", testList},
		{"InvalidID", testInvalidID},
		{"UnknownKeyType", testUnknownKeyType},
		{"Concurrent", testConcurrent},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
}

// ID returns the i-th of a fixed sequence of valid key IDs.
func ID(i int) string { return fmt.Sprintf("%032x", i+1) }

func spki(t *testing.T, s crypto.Signer) []byte {
	t.Helper()
	b, err := x509.MarshalPKIXPublicKey(s.Public())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func testGenerateLoadSign(t *testing.T, s Store) {
	ctx := t.Context()
	for i, kt := range x509ca.KeyTypes() {
		t.Run(kt, func(t *testing.T) {
			id := ID(i)
			gen, err := s.Generate(ctx, id, kt)
			if err != nil {
				t.Fatal(err)
			}
			loaded, err := s.Load(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(spki(t, gen), spki(t, loaded)) {
				t.Fatal("loaded key differs from the generated one")
			}
			digest := sha256.Sum256([]byte("writ"))
			sig, err := loaded.Sign(rand.Reader, digest[:], crypto.SHA256)
			if err != nil {
				t.Fatal(err)
			}
			switch pub := gen.Public().(type) {
			case *ecdsa.PublicKey:
				if !ecdsa.VerifyASN1(pub, digest[:], sig) {
					t.Fatal("signature does not verify")
				}
			case *rsa.PublicKey:
				if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig); err != nil {
					t.Fatal(err)
				}
			default:
				t.Fatalf("unexpected key type %T", pub)
			}
			if err := x509ca.CheckPublicKey(gen.Public()); err != nil {
				t.Fatalf("generated key fails the key policy: %v", err)
			}
		})
	}
}

func testGenerateExisting(t *testing.T, s Store) {
	ctx := t.Context()
	first, err := s.Generate(ctx, ID(0), x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Generate(ctx, ID(0), x509ca.KeyTypeECP256); !errors.Is(err, keystore.ErrExists) {
		t.Fatalf("Generate over an existing ID = %v, want ErrExists", err)
	}
	loaded, err := s.Load(ctx, ID(0))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(spki(t, first), spki(t, loaded)) {
		t.Fatal("a refused Generate replaced the key")
	}
}

func testMissing(t *testing.T, s Store) {
	ctx := t.Context()
	if _, err := s.Load(ctx, ID(0)); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("Load of a missing key = %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, ID(0)); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("Delete of a missing key = %v, want ErrNotFound", err)
	}
}

func testDelete(t *testing.T, s Store) {
	ctx := t.Context()
	for i := range 2 {
		if _, err := s.Generate(ctx, ID(i), x509ca.KeyTypeECP256); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(ctx, ID(0)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(ctx, ID(0)); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("Load after Delete = %v, want ErrNotFound", err)
	}
	if _, err := s.Load(ctx, ID(1)); err != nil {
		t.Fatalf("Delete removed another key: %v", err)
	}
	// The ID can be used again.
	if _, err := s.Generate(ctx, ID(0), x509ca.KeyTypeECP256); err != nil {
		t.Fatal(err)
	}
}

func testList(t *testing.T, s Store) {
	ctx := t.Context()
	ids, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 0 {
		t.Fatalf("new store lists %v", ids)
	}
	want := []string{ID(2), ID(0), ID(1)}
	for _, id := range want {
		if _, err := s.Generate(ctx, id, x509ca.KeyTypeECP256); err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(want)
	if ids, err = s.List(ctx); err != nil || !slices.Equal(ids, want) {
		t.Fatalf("List = %v, %v; want %v sorted", ids, err, want)
	}
	if err := s.Delete(ctx, ID(1)); err != nil {
		t.Fatal(err)
	}
	if ids, err = s.List(ctx); err != nil || !slices.Equal(ids, []string{ID(0), ID(2)}) {
		t.Fatalf("List after Delete = %v, %v", ids, err)
	}
}

func testInvalidID(t *testing.T, s Store) {
	ctx := t.Context()
	for _, id := range []string{"", "../" + ID(0)[3:], "ABCDEF" + ID(0)[6:], ID(0) + "0", hex.EncodeToString([]byte("/etc/passwd/etc/"))[:31] + "/"} {
		if _, err := s.Generate(ctx, id, x509ca.KeyTypeECP256); !errors.Is(err, keystore.ErrInvalidID) {
			t.Errorf("Generate(%q) = %v, want ErrInvalidID", id, err)
		}
		if _, err := s.Load(ctx, id); !errors.Is(err, keystore.ErrInvalidID) {
			t.Errorf("Load(%q) = %v, want ErrInvalidID", id, err)
		}
		if err := s.Delete(ctx, id); !errors.Is(err, keystore.ErrInvalidID) {
			t.Errorf("Delete(%q) = %v, want ErrInvalidID", id, err)
		}
	}
}

func testUnknownKeyType(t *testing.T, s Store) {
	ctx := t.Context()
	if _, err := s.Generate(ctx, ID(0), "dsa-1024"); !errors.Is(err, x509ca.ErrKeyType) {
		t.Fatalf("Generate of an unknown key type = %v, want x509ca.ErrKeyType", err)
	}
	if ids, _ := s.List(ctx); len(ids) != 0 {
		t.Fatalf("a refused Generate left %v", ids)
	}
}

func testConcurrent(t *testing.T, s Store) {
	ctx := t.Context()
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			_, errs[i] = s.Generate(ctx, ID(i), x509ca.KeyTypeECP256)
		})
	}
	// Everyone races for the same ID too: exactly one wins.
	wins := make([]error, n)
	for i := range n {
		wg.Go(func() {
			_, wins[i] = s.Generate(ctx, ID(100), x509ca.KeyTypeECP256)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Generate %d: %v", i, err)
		}
	}
	won := 0
	for _, err := range wins {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, keystore.ErrExists):
			t.Fatalf("racing Generate: %v", err)
		}
	}
	if won != 1 {
		t.Fatalf("%d racing Generates of one ID succeeded, want 1", won)
	}
	ids, err := s.List(ctx)
	if err != nil || len(ids) != n+1 {
		t.Fatalf("List = %d IDs, %v; want %d", len(ids), err, n+1)
	}
}
