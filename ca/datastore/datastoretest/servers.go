package datastoretest

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

func testServers(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	ctx := t.Context()
	list, err := s.ListServers(ctx)
	requireNoError(t, "ListServers", err)
	if len(list) != 0 {
		t.Fatalf("new store lists servers: %+v", list)
	}
	revBefore := latestRevision(t, s)

	b := &datastore.Server{ID: "b0b0b0b0b0b0b0b0", Address: "10.0.0.2:8081", Version: "v1.2.3", StartedAt: t0, Heartbeat: t0.Add(10 * time.Second)}
	a := &datastore.Server{ID: "a0a0a0a0a0a0a0a0", Address: "[2001:db8::1]:8081", Version: "(devel)", StartedAt: t0.Add(time.Minute), Heartbeat: t0.Add(time.Minute)}
	// Put b first: the list is in ID order, not insertion order.
	requireNoError(t, "PutServer", s.PutServer(ctx, b))
	put := *a
	requireNoError(t, "PutServer", s.PutServer(ctx, &put))
	list, err = s.ListServers(ctx)
	requireNoError(t, "ListServers", err)
	requireServers(t, "listed", []*datastore.Server{a, b}, list)

	// Records are copied in and out.
	put.Address = "changed by the caller"
	list[0].Version = "changed by the caller"
	list, err = s.ListServers(ctx)
	requireNoError(t, "ListServers", err)
	requireServers(t, "listed after mutating the input and a result", []*datastore.Server{a, b}, list)

	// Put replaces: a heartbeat, then a restart on a new address.
	beat := *b
	beat.Heartbeat = t0.Add(20 * time.Second)
	requireNoError(t, "PutServer (heartbeat)", s.PutServer(ctx, &beat))
	restarted := *a
	restarted.Address = "10.0.0.1:9090"
	restarted.Version = "v1.2.4"
	restarted.StartedAt = t0.Add(time.Hour)
	restarted.Heartbeat = t0.Add(time.Hour)
	requireNoError(t, "PutServer (restart)", s.PutServer(ctx, &restarted))
	list, err = s.ListServers(ctx)
	requireNoError(t, "ListServers", err)
	requireServers(t, "listed after replace", []*datastore.Server{&restarted, &beat}, list)

	// Server records are not events.
	if rev := latestRevision(t, s); rev != revBefore {
		t.Errorf("PutServer moved the revision from %d to %d; server records record no event", revBefore, rev)
	}
	if evs := allEvents(t, s, revBefore); len(evs) != 0 {
		t.Errorf("PutServer logged events: %+v", evs)
	}

	// A record without an ID is refused.
	requireErrorIs(t, "PutServer with an empty ID", s.PutServer(ctx, &datastore.Server{Address: "10.0.0.3:8081"}), entry.ErrInvalid)
	list, err = s.ListServers(ctx)
	requireNoError(t, "ListServers", err)
	if len(list) != 2 {
		t.Errorf("after a refused PutServer: %d servers, want 2", len(list))
	}
}

func normServer(s *datastore.Server) *datastore.Server {
	if s == nil {
		return nil
	}
	c := *s
	c.StartedAt = normTime(c.StartedAt)
	c.Heartbeat = normTime(c.Heartbeat)
	return &c
}

// requireServers checks got against want, in order: ListServers promises
// ID order.
func requireServers(t testing.TB, what string, want, got []*datastore.Server) {
	t.Helper()
	if !slices.IsSortedFunc(want, func(a, b *datastore.Server) int { return strings.Compare(a.ID, b.ID) }) {
		t.Fatalf("%s: test bug: want is not in ID order", what)
	}
	w := make([]*datastore.Server, len(want))
	for i, s := range want {
		w[i] = normServer(s)
	}
	g := make([]*datastore.Server, len(got))
	for i, s := range got {
		g[i] = normServer(s)
	}
	if !reflect.DeepEqual(w, g) {
		t.Fatalf("%s:\n got %+v\nwant %+v", what, derefServers(g), derefServers(w))
	}
}

func derefServers(ss []*datastore.Server) []datastore.Server {
	out := make([]datastore.Server, len(ss))
	for i, s := range ss {
		out[i] = *s
	}
	return out
}
