package boltstore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/datastore/boltstore"
	"writ.dev/writ/ca/entry"
)

func ExampleOpen() {
	dir, err := os.MkdirTemp("", "writ")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "datastore.db")

	s, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		panic(err)
	}
	defer s.Close()

	td := spiffeid.RequireTrustDomainFromString("example.org")
	e := &entry.Entry{
		SPIFFEID:  spiffeid.RequireFromPath(td, "/web"),
		ParentID:  spiffeid.RequireFromPath(td, "/agent/node-1"),
		Selectors: []entry.Selector{{Type: "unix", Value: "uid:1000"}},
	}
	ctx := context.Background()
	res, err := s.CreateEntries(ctx, []*entry.Entry{e, e})
	if err != nil {
		panic(err)
	}
	fmt.Println("first:", res[0].Err, res[0].Entry.Revision)
	fmt.Println("second is a duplicate:", errors.Is(res[1].Err, datastore.ErrAlreadyExists))

	// A second Open of the same file fails fast.
	_, err = boltstore.Open(path, boltstore.Options{})
	fmt.Println("in use:", errors.Is(err, datastore.ErrInUse))
	// Output:
	// first: <nil> 1
	// second is a duplicate: true
	// in use: true
}
