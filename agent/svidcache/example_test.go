package svidcache_test

import (
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/entry"
)

func ExampleCache_Identities() {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	c, _ := svidcache.New(svidcache.Config{TrustDomain: td})
	web := &entry.Entry{
		ID:        "6f1c2a4e-0000-4000-8000-000000000001",
		SPIFFEID:  spiffeid.RequireFromPath(td, "/web"),
		Selectors: []entry.Selector{{Type: "unix", Value: "uid:1000"}},
	}
	admin := &entry.Entry{
		ID:        "6f1c2a4e-0000-4000-8000-000000000002",
		SPIFFEID:  spiffeid.RequireFromPath(td, "/admin"),
		Selectors: []entry.Selector{{Type: "unix", Value: "path:/bin/admin"}, {Type: "unix", Value: "uid:1000"}},
	}
	res := c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{web, admin}})
	// A full set: nothing is urgent; all may be signed as room allows.
	fmt.Println("to sign first:", len(res.Sign), "backlog:", len(res.Backlog))

	workload := []entry.Selector{{Type: "unix", Value: "uid:1000"}, {Type: "unix", Value: "gid:1000"}}
	for _, id := range c.Identities(workload) {
		fmt.Println(id.ID)
	}
	// Output:
	// to sign first: 0 backlog: 2
	// spiffe://example.org/web
}
