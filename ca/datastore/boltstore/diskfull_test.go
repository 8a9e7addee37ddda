//go:build linux

package boltstore_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/datastore/boltstore"
	"writ.dev/writ/ca/entry"
)

// fullChildEnv names a datastore the child writes to with a file size
// limit (RLIMIT_FSIZE) just above its size, standing in for a full disk.
const fullChildEnv = "WRIT_BOLTSTORE_FULL_CHILD"

// TestDiskFull checks that running out of space fails writes with errors
// and damages nothing: the store goes on serving reads, and reopened
// without the limit it passes Open's checks and holds every write that
// was acknowledged.
func TestDiskFull(t *testing.T) {
	if path := os.Getenv(fullChildEnv); path != "" {
		diskFullChild(path)
		return
	}
	path := filepath.Join(t.TempDir(), "writ.db")
	s, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	before := len(createN(t, s, 0, 500))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	cmd, out := startChild(t, "TestDiskFull", fullChildEnv+"="+path)
	var acked []string
	var failures int
	for out.Scan() {
		line := out.Text()
		if id, ok := strings.CutPrefix(line, "ack "); ok {
			acked = append(acked, id)
		} else if msg, ok := strings.CutPrefix(line, "error "); ok {
			if failures == 0 {
				t.Logf("first failed write: %s", msg)
			}
			failures++
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
	if failures == 0 {
		t.Fatal("no write failed: the limit did not bite")
	}
	t.Logf("%d writes acknowledged before the limit, %d failed", len(acked), failures)

	s, err = boltstore.Open(path, boltstore.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("reopen after the disk filled: %v", err)
	}
	defer s.Close()
	for _, id := range acked {
		if _, err := s.FetchEntry(t.Context(), id); err != nil {
			t.Errorf("acknowledged entry %s: %v", id, err)
		}
	}
	list, err := s.ListEntries(t.Context(), datastore.EntryFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != before+len(acked) {
		t.Errorf("%d entries stored, want %d", len(list), before+len(acked))
	}
	// And it takes writes again.
	createN(t, s, 1_000_000, 10)
}

func diskFullChild(path string) {
	info, err := os.Stat(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(2)
	}
	limit := uint64(info.Size()) + 64<<10
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: limit, Max: limit}); err != nil {
		fmt.Fprintln(os.Stderr, "child: setrlimit:", err)
		os.Exit(2)
	}
	s, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: open:", err)
		os.Exit(2)
	}
	ctx := context.Background()
	failures := 0
	for i := 0; failures < 10 && i < 10_000; i++ {
		batch := make([]*entry.Entry, 50)
		for j := range batch {
			batch[j] = newEntry(100_000 + 50*i + j)
		}
		res, err := s.CreateEntries(ctx, batch)
		if err != nil {
			fmt.Println("error", err)
			failures++
			continue
		}
		for _, r := range res {
			if r.Err != nil {
				fmt.Fprintln(os.Stderr, "child: entry:", r.Err)
				os.Exit(3)
			}
			fmt.Println("ack", r.Entry.ID)
		}
	}
	// Reads still work.
	if _, err := s.FetchAgent(ctx, spiffeid.RequireFromPath(td, "/agent/none")); err == nil {
		os.Exit(4)
	}
	if _, err := s.Snapshot(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "child: snapshot:", err)
		os.Exit(5)
	}
	if err := s.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "child: close:", err)
		os.Exit(6)
	}
	os.Exit(0)
}
