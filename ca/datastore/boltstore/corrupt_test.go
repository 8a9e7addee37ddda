package boltstore_test

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/datastore/boltstore"
)

const pageSize = 4096

// newFile makes a datastore holding n entries and returns its path.
func newFile(t *testing.T, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "writ.db")
	s, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i += 500 {
		createN(t, s, i, min(500, n-i))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// newFileWithServer makes a datastore holding one server record and
// returns its path.
func newFileWithServer(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "writ.db")
	s, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if err := s.PutServer(t.Context(), &datastore.Server{ID: "0123456789abcdef", Address: "127.0.0.1:8081", Version: "v1", StartedAt: now, Heartbeat: now}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// editBolt changes a datastore file with bbolt directly.
func editBolt(t *testing.T, path string, fn func(tx *bbolt.Tx) error) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestCorruptFile checks that Open refuses a damaged file with
// ErrCorrupt and a message naming it, and leaves the file as it was.
func TestCorruptFile(t *testing.T) {
	tests := []struct {
		name string
		// damage makes the file at path unreadable; path may not exist
		// yet.
		damage func(t *testing.T, path string)
	}{
		{"empty file", func(t *testing.T, path string) {
			write(t, path, nil)
		}},
		{"a few garbage bytes", func(t *testing.T, path string) {
			write(t, path, randomBytes(100))
		}},
		{"garbage", func(t *testing.T, path string) {
			write(t, path, randomBytes(64*1024))
		}},
		{"meta pages zeroed", func(t *testing.T, path string) {
			copyFile(t, newFile(t, 100), path)
			overwrite(t, path, 0, make([]byte, 2*pageSize))
		}},
		{"truncated to half its pages", func(t *testing.T, path string) {
			copyFile(t, newFile(t, 3000), path)
			truncate(t, path, usedSize(t, path)/2)
		}},
		{"last page cut short", func(t *testing.T, path string) {
			copyFile(t, newFile(t, 3000), path)
			truncate(t, path, usedSize(t, path)-1)
		}},
		{"truncated to the meta pages", func(t *testing.T, path string) {
			copyFile(t, newFile(t, 100), path)
			truncate(t, path, 2*pageSize)
		}},
		{"data pages overwritten", func(t *testing.T, path string) {
			copyFile(t, newFile(t, 1000), path)
			info, _ := os.Stat(path)
			overwrite(t, path, 2*pageSize, randomBytes(int(info.Size())-2*pageSize))
		}},
		{"a bbolt file of something else", func(t *testing.T, path string) {
			editBolt(t, path, func(tx *bbolt.Tx) error {
				_, err := tx.CreateBucket([]byte("other"))
				return err
			})
		}},
		{"format version from the future", func(t *testing.T, path string) {
			copyFile(t, newFile(t, 10), path)
			editBolt(t, path, func(tx *bbolt.Tx) error {
				return tx.Bucket(boltstore.BucketMeta).Put(boltstore.KeyFormat, []byte{9})
			})
		}},
		{"entry record garbage", func(t *testing.T, path string) {
			copyFile(t, newFile(t, 10), path)
			editBolt(t, path, func(tx *bbolt.Tx) error {
				b := tx.Bucket(boltstore.BucketEntries)
				k, v := b.Cursor().First()
				v = bytes.Clone(v)
				v[len(v)/2] ^= 0xff
				v = v[:len(v)-3]
				return b.Put(bytes.Clone(k), v)
			})
		}},
		{"index key missing", func(t *testing.T, path string) {
			copyFile(t, newFile(t, 10), path)
			editBolt(t, path, func(tx *bbolt.Tx) error {
				b := tx.Bucket(boltstore.BucketBySelector)
				k, _ := b.Cursor().Last()
				return b.Delete(bytes.Clone(k))
			})
		}},
		{"stray index key", func(t *testing.T, path string) {
			copyFile(t, newFile(t, 10), path)
			editBolt(t, path, func(tx *bbolt.Tx) error {
				return tx.Bucket(boltstore.BucketBySelector).Put([]byte("\x01x\x01y-no-such-entry"), []byte{1})
			})
		}},
		{"server record garbage", func(t *testing.T, path string) {
			copyFile(t, newFileWithServer(t), path)
			editBolt(t, path, func(tx *bbolt.Tx) error {
				b := tx.Bucket(boltstore.BucketServers)
				k, v := b.Cursor().First()
				v = bytes.Clone(v)
				v[len(v)/2] ^= 0x01
				return b.Put(bytes.Clone(k), v)
			})
		}},
		{"server record under another ID", func(t *testing.T, path string) {
			copyFile(t, newFileWithServer(t), path)
			editBolt(t, path, func(tx *bbolt.Tx) error {
				b := tx.Bucket(boltstore.BucketServers)
				_, v := b.Cursor().First()
				return b.Put([]byte("0000000000000000"), bytes.Clone(v))
			})
		}},
		{"event missing from the log", func(t *testing.T, path string) {
			copyFile(t, newFile(t, 10), path)
			editBolt(t, path, func(tx *bbolt.Tx) error {
				return tx.Bucket(boltstore.BucketEvents).Delete(binary.BigEndian.AppendUint64(nil, 5))
			})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "writ.db")
			tt.damage(t, path)
			before, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}

			s, err := boltstore.Open(path, boltstore.Options{Logger: testLogger(t)})
			if err == nil {
				s.Close()
				t.Fatal("Open accepted a damaged file")
			}
			if !errors.Is(err, datastore.ErrCorrupt) {
				t.Fatalf("Open: got %v, want ErrCorrupt", err)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file", err)
			}
			t.Logf("Open: %v", err)

			after, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(before, after) {
				t.Error("Open changed the damaged file")
			}
			// The failed Open let go of the file.
			db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: 100 * time.Millisecond, ReadOnly: true})
			if errors.Is(err, bbolt.ErrTimeout) {
				t.Error("Open left the damaged file locked")
			}
			if err == nil {
				db.Close()
			}
		})
	}
}

// usedSize returns the size of the pages a bbolt file uses; the file
// itself may be longer.
func usedSize(t *testing.T, path string) int64 {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var size int64
	_ = db.View(func(tx *bbolt.Tx) error {
		size = tx.Size()
		return nil
	})
	return size
}

func write(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	write(t, to, b)
}

func overwrite(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func truncate(t *testing.T, path string, size int64) {
	t.Helper()
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}

// TestEveryLivePageDamaged overwrites, one at a time, every page the file
// uses with garbage: Open must refuse each. Garbage in a free page is
// harmless and must not stop Open.
func TestEveryLivePageDamaged(t *testing.T) {
	src := newFile(t, 300)
	orig, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	var live, free []int
	db, err := bbolt.Open(src, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.View(func(tx *bbolt.Tx) error {
		for id := 2; ; id++ {
			info, err := tx.Page(id)
			if err != nil || info == nil {
				return err
			}
			switch info.Type {
			case "free":
				free = append(free, id)
			case "leaf", "branch", "freelist":
				for i := range info.OverflowCount + 1 {
					live = append(live, id+i)
				}
				id += info.OverflowCount
			default:
				return fmt.Errorf("page %d has type %q", id, info.Type)
			}
		}
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(live) < 10 || len(free) == 0 {
		t.Fatalf("%d live and %d free pages: not a useful test file", len(live), len(free))
	}

	dir := t.TempDir()
	open := func(page int) error {
		path := filepath.Join(dir, fmt.Sprintf("page-%d.db", page))
		b := bytes.Clone(orig)
		copy(b[page*pageSize:(page+1)*pageSize], randomBytes(pageSize))
		write(t, path, b)
		s, err := boltstore.Open(path, boltstore.Options{})
		if err == nil {
			_, err = s.Snapshot(t.Context())
			s.Close()
		}
		return err
	}
	for _, page := range live {
		if err := open(page); !errors.Is(err, datastore.ErrCorrupt) {
			t.Errorf("live page %d overwritten: Open: %v, want ErrCorrupt", page, err)
		}
	}
	for _, page := range free[:min(len(free), 5)] {
		if err := open(page); err != nil {
			t.Errorf("free page %d overwritten: %v", page, err)
		}
	}
	t.Logf("%d live pages refused, %d free pages accepted", len(live), min(len(free), 5))
}

// TestOpenAddsServersBucket checks that a file written before server
// records existed opens, gains the bucket, and keeps its entries.
func TestOpenAddsServersBucket(t *testing.T) {
	path := newFile(t, 10)
	editBolt(t, path, func(tx *bbolt.Tx) error {
		return tx.DeleteBucket(boltstore.BucketServers)
	})
	s, err := boltstore.Open(path, boltstore.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Open of a file without the servers bucket: %v", err)
	}
	defer s.Close()
	ctx := t.Context()
	if list, err := s.ListServers(ctx); err != nil || len(list) != 0 {
		t.Fatalf("ListServers: %v, %v; want none", list, err)
	}
	now := time.Now()
	if err := s.PutServer(ctx, &datastore.Server{ID: "0123456789abcdef", Address: "127.0.0.1:8081", StartedAt: now, Heartbeat: now}); err != nil {
		t.Fatalf("PutServer: %v", err)
	}
	if list, err := s.ListServers(ctx); err != nil || len(list) != 1 {
		t.Fatalf("ListServers: %v, %v; want one", list, err)
	}
	if entries, err := s.ListEntries(ctx, datastore.EntryFilter{}); err != nil || len(entries) != 10 {
		t.Fatalf("ListEntries: %d entries, %v; want 10", len(entries), err)
	}
}
