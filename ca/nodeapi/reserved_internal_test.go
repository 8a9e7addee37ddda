package nodeapi

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/datastore/boltstore"
	"writ.dev/writ/ca/entry"
)

// syncWriter is a bytes.Buffer safe for a logger and a test to share.
type syncWriter struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// TestIndexSkipsReservedEntries: entries stored (before /writ/ was
// reserved, or by going around the admin API) with a SPIFFE ID under
// /writ/ are reported by ID when the index loads and never reach an
// agent; events carrying one are skipped too.
func TestIndexSkipsReservedEntries(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	bs, err := boltstore.Open(filepath.Join(t.TempDir(), "db"), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bs.Close() })
	ctx := context.Background()
	mk := func(id, path string) *entry.Entry {
		return &entry.Entry{ID: id, SPIFFEID: spiffeid.RequireFromPath(td, path), ParentID: parentA, Selectors: []entry.Selector{{Type: "unix", Value: "uid:1"}}}
	}
	const (
		takeover = "00000000-0000-4000-8000-000000000001"
		server   = "00000000-0000-4000-8000-000000000002"
		fine     = "00000000-0000-4000-8000-000000000003"
	)
	res, err := bs.CreateEntries(ctx, []*entry.Entry{mk(takeover, "/writ/agent/b"), mk(server, "/writ/server"), mk(fine, "/web")})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	if err := bs.CreateAgent(ctx, &datastore.Agent{SPIFFEID: spiffeid.RequireFromPath(td, "/host/old"), AttestationType: "join_token", SerialNumber: "1"}); err != nil {
		t.Fatal(err)
	}
	var logs syncWriter
	ix := newIndex(bs, td, clock.Real(), slog.New(slog.NewTextHandler(&logs, nil)))
	if err := ix.load(ctx); err != nil {
		t.Fatal(err)
	}
	if ix.entry(takeover) != nil || ix.entry(server) != nil || ix.entry(fine) == nil {
		t.Fatalf("index holds %v; want only the entry outside /writ/", ix.entries)
	}
	if got := len(ix.byParent[parentA]); got != 1 {
		t.Errorf("agent a is sent %d entries, want 1", got)
	}
	out := logs.String()
	for _, want := range []string{"level=WARN", "reserved path /writ/", takeover, server, "spiffe://example.org/host/old"} {
		if !strings.Contains(out, want) {
			t.Errorf("load log lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, fine) {
		t.Errorf("load log names the valid entry:\n%s", out)
	}

	// An event that turns the valid entry into a reserved one removes it.
	moved := mk(fine, "/writ/agent/c")
	if err := ix.apply(ctx, []datastore.Event{{Revision: ix.rev + 1, Kind: datastore.EventEntry, Key: fine, Entry: moved}}); err != nil {
		t.Fatal(err)
	}
	if ix.entry(fine) != nil || len(ix.byParent[parentA]) != 0 {
		t.Error("an entry moved under /writ/ is still in the index")
	}
}
