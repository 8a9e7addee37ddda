package boltstore_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/datastore/boltstore"
	"writ.dev/writ/ca/entry"
)

// Environment variables that make the test binary, run again as a child
// process, act out one side of a test instead of running it.
const (
	// crashChildEnv names a datastore the child writes to until killed.
	crashChildEnv = "WRIT_BOLTSTORE_CRASH_CHILD"
	// holdChildEnv names a datastore the child opens and holds.
	holdChildEnv = "WRIT_BOLTSTORE_HOLD_CHILD"
)

// startChild runs the test binary again as a child process running only
// test, with env set, and returns it with its standard output.
func startChild(t *testing.T, test, env string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), env)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	// The child may wait on its standard input, which stays open until
	// the test ends.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = stdin.Close()
		// Kill is a no-op error if the child has already gone.
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if stderr.Len() > 0 {
			t.Logf("child stderr:\n%s", stderr.String())
		}
	})
	return cmd, bufio.NewScanner(stdout)
}

// killChild sends SIGKILL to the child and waits for it to die.
func killChild(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Kill(); err != nil {
		t.Fatalf("kill child: %v", err)
	}
	_ = cmd.Wait()
}

// TestCrashDurability kills (SIGKILL) a process writing to the datastore
// at arbitrary points and checks that every write it acknowledged is
// there when the file is opened again, several times over on one file.
func TestCrashDurability(t *testing.T) {
	if path := os.Getenv(crashChildEnv); path != "" {
		crashChild(path)
		return
	}
	path := filepath.Join(t.TempDir(), "writ.db")
	var acked []string
	for round := range 4 {
		cmd, out := startChild(t, "TestCrashDurability", crashChildEnv+"="+path)
		// Let the child run ahead of what the parent has read, so that
		// the kill lands in the middle of a write.
		want := 20 + 15*round
		n := 0
		for n < want && out.Scan() {
			id, ok := strings.CutPrefix(out.Text(), "ack ")
			if !ok {
				continue
			}
			acked = append(acked, id)
			n++
		}
		killChild(t, cmd)
		if n < want {
			t.Fatalf("round %d: child stopped after %d acknowledged writes: %v", round, n, out.Err())
		}
		// Acknowledgements the child printed but we had not read yet
		// are acknowledged too.
		for out.Scan() {
			if id, ok := strings.CutPrefix(out.Text(), "ack "); ok {
				acked = append(acked, id)
			}
		}

		s, err := boltstore.Open(path, boltstore.Options{Logger: testLogger(t)})
		if err != nil {
			t.Fatalf("round %d: reopen after kill: %v", round, err)
		}
		for _, id := range acked {
			if _, err := s.FetchEntry(t.Context(), id); err != nil {
				t.Errorf("round %d: acknowledged entry %s: %v", round, id, err)
			}
		}
		snap, err := s.Snapshot(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if len(snap.Entries) < len(acked) {
			t.Errorf("round %d: %d entries stored, %d acknowledged", round, len(snap.Entries), len(acked))
		}
		t.Logf("round %d: %d acknowledged, %d stored", round, len(acked), len(snap.Entries))
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// crashChild creates entries one per transaction, printing the ID of each
// once CreateEntries has returned, until it is killed.
func crashChild(path string) {
	s, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: open:", err)
		os.Exit(2)
	}
	ctx := context.Background()
	pid := os.Getpid()
	for i := 0; ; i++ {
		e := newEntry(i)
		// Entries of different children must not be duplicates.
		e.SPIFFEID = spiffeid.RequireFromPathf(td, "%s/%d", e.SPIFFEID.Path(), pid)
		res, err := s.CreateEntries(ctx, []*entry.Entry{e})
		if err == nil {
			err = res[0].Err
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "child: create:", err)
			os.Exit(3)
		}
		if _, err := fmt.Fprintf(os.Stdout, "ack %s\n", res[0].Entry.ID); err != nil {
			os.Exit(4)
		}
	}
}

// TestSecondOpener checks that a datastore open in one process cannot be
// opened by another, that Open says so promptly, and that the file can be
// opened once the holder dies.
func TestSecondOpener(t *testing.T) {
	if path := os.Getenv(holdChildEnv); path != "" {
		s, err := boltstore.Open(path, boltstore.Options{})
		if err != nil {
			fmt.Fprintln(os.Stderr, "child: open:", err)
			os.Exit(2)
		}
		fmt.Println("open")
		// Hold the file until killed or the parent closes stdin.
		_, _ = io.Copy(io.Discard, os.Stdin)
		s.Close()
		os.Exit(0)
	}

	path := filepath.Join(t.TempDir(), "writ.db")
	cmd, out := startChild(t, "TestSecondOpener", holdChildEnv+"="+path)
	for out.Scan() && out.Text() != "open" {
	}
	if out.Text() != "open" {
		t.Fatalf("child did not open the datastore: %v", out.Err())
	}
	requireInUse(t, path)
	killChild(t, cmd)

	s, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatalf("Open after the holder died: %v", err)
	}
	defer s.Close()
	// Within one process, too, a second Open fails: flock locks belong to
	// the open file, not the process.
	requireInUse(t, path)
	createN(t, s, 0, 1)
}

func requireInUse(t *testing.T, path string) {
	t.Helper()
	start := time.Now()
	s, err := boltstore.Open(path, boltstore.Options{})
	took := time.Since(start)
	if err == nil {
		s.Close()
		t.Fatal("a second Open succeeded")
	}
	if !errors.Is(err, datastore.ErrInUse) {
		t.Fatalf("second Open: got %v, want ErrInUse", err)
	}
	// The message is for an operator: it must name the file.
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name the file", err)
	}
	if took > 2*time.Second {
		t.Errorf("second Open took %s to fail", took)
	}
	t.Logf("second Open failed after %s: %v", took.Round(time.Millisecond), err)
}
