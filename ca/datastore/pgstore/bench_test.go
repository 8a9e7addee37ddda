package pgstore_test

import (
	"fmt"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/entry"
	"writ.dev/writ/internal/pgtest"
)

// BenchmarkCreateEntries creates entries in batches of 1,000, each batch
// one transaction (one lookup of taken IDs and keys, then COPY), on a
// cluster of its own with fsync on, into a database that grows as the
// benchmark runs.
func BenchmarkCreateEntries(b *testing.B) {
	s := open(b, pgtest.NewDurable(b).NewDatabase(b))
	const batch = 1000
	n := 0
	for b.Loop() {
		entries := make([]*entry.Entry, batch)
		for i := range entries {
			entries[i] = &entry.Entry{
				SPIFFEID:  spiffeid.RequireFromPathf(td, "/w/%d", n),
				ParentID:  spiffeid.RequireFromPathf(td, "/agent/%d", n%100),
				Selectors: []entry.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", n)}},
				DNSNames:  []string{"svc.example.org"},
			}
			n++
		}
		res, err := s.CreateEntries(b.Context(), entries)
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range res {
			if r.Err != nil {
				b.Fatal(r.Err)
			}
		}
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "entries/s")
}
