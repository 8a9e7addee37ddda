package keystore_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"writ.dev/writ/ca/keymanager/keystore"
	"writ.dev/writ/ca/keymanager/keystoretest"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/datadir"
)

func TestDiskConformance(t *testing.T) {
	keystoretest.Run(t, func(t *testing.T) keystoretest.Store {
		d, err := keystore.NewDisk(filepath.Join(t.TempDir(), "keys"))
		if err != nil {
			t.Fatal(err)
		}
		return d
	})
}

func TestMemoryConformance(t *testing.T) {
	keystoretest.Run(t, func(*testing.T) keystoretest.Store { return keystore.NewMemory() })
}

func newDisk(t *testing.T) *keystore.Disk {
	t.Helper()
	d, err := keystore.NewDisk(filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestDiskFiles: keys are 0600 PKCS#8 files in a 0700 directory and
// survive a new store on the same directory.
func TestDiskFiles(t *testing.T) {
	ctx := context.Background()
	d := newDisk(t)
	id := keystoretest.ID(0)
	if _, err := d.Generate(ctx, id, x509ca.KeyTypeECP256); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(d.Dir()); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("key directory: %v, %v", fi, err)
	}
	path := filepath.Join(d.Dir(), id+".pem")
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v", fi, err)
	}
	again, err := keystore.NewDisk(d.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := again.Load(ctx, id); err != nil {
		t.Fatalf("key did not survive: %v", err)
	}
	// Files that are not <id>.pem are not keys.
	os.WriteFile(filepath.Join(d.Dir(), "notes.pem"), []byte("x"), 0o600)
	os.WriteFile(filepath.Join(d.Dir(), keystoretest.ID(1)+".pem.tmp"), []byte("x"), 0o600)
	if ids, err := again.List(ctx); err != nil || len(ids) != 1 || ids[0] != id {
		t.Fatalf("List = %v, %v", ids, err)
	}
}

func TestDiskRefusesBadFiles(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		spoil func(path string)
		want  error
	}{
		{"corrupt", func(p string) { os.WriteFile(p, []byte("not a key"), 0o600) }, keystore.ErrCorrupt},
		{"trailing data", func(p string) {
			b, _ := os.ReadFile(p)
			os.WriteFile(p, append(b, b...), 0o600)
		}, keystore.ErrCorrupt},
		{"readable by others", func(p string) { os.Chmod(p, 0o644) }, datadir.ErrPermissions},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDisk(t)
			id := keystoretest.ID(0)
			if _, err := d.Generate(ctx, id, x509ca.KeyTypeECP256); err != nil {
				t.Fatal(err)
			}
			tc.spoil(filepath.Join(d.Dir(), id+".pem"))
			if _, err := d.Load(ctx, id); !errors.Is(err, tc.want) {
				t.Fatalf("Load = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestDiskRefusesOpenDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := keystore.NewDisk(dir); !errors.Is(err, datadir.ErrPermissions) {
		t.Fatalf("NewDisk on a 0755 directory = %v, want ErrPermissions", err)
	}
}
