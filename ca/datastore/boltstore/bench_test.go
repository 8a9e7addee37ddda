package boltstore_test

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/datastore/boltstore"
	"writ.dev/writ/ca/entry"
)

// BenchmarkCreateEntries creates entries in batches of 1,000, each batch
// one durable (fsynced) transaction, into a store that grows as the
// benchmark runs.
func BenchmarkCreateEntries(b *testing.B) {
	s, _ := openStore(b, boltstore.Options{})
	const batch = 1000
	n := 0
	for b.Loop() {
		entries := make([]*entry.Entry, batch)
		for i := range entries {
			entries[i] = newEntry(n)
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

// storeWith10k returns a store holding 10,000 entries under 100 parents.
func storeWith10k(b *testing.B) (*boltstore.Store, string) {
	s, path := openStore(b, boltstore.Options{})
	for i := 0; i < 10_000; i += 1000 {
		createN(b, s, i, 1000)
	}
	return s, path
}

func reportMS(b *testing.B) {
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/op")
}

// BenchmarkListEntries10k lists all of 10,000 entries.
func BenchmarkListEntries10k(b *testing.B) {
	s, _ := storeWith10k(b)
	for b.Loop() {
		list, err := s.ListEntries(b.Context(), datastore.EntryFilter{})
		if err != nil || len(list) != 10_000 {
			b.Fatalf("ListEntries: %d entries, %v", len(list), err)
		}
	}
	reportMS(b)
}

// BenchmarkListEntriesByParent lists the 100 entries of one parent among
// 10,000 entries.
func BenchmarkListEntriesByParent(b *testing.B) {
	s, _ := storeWith10k(b)
	i := 0
	for b.Loop() {
		parent := spiffeid.RequireFromPathf(td, "/agent/%d", i%100)
		i++
		list, err := s.ListEntries(b.Context(), datastore.EntryFilter{ParentID: parent})
		if err != nil || len(list) != 100 {
			b.Fatalf("ListEntries: %d entries, %v", len(list), err)
		}
	}
	reportMS(b)
}

// BenchmarkOpen10k opens a store of 10,000 entries (and their 10,000
// events), which reads and checks the whole file.
func BenchmarkOpen10k(b *testing.B) {
	s, path := storeWith10k(b)
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		s, err := boltstore.Open(path, boltstore.Options{})
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
	}
	reportMS(b)
}
