package svidcache_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/entry"
)

// newTemplate returns a valid template entry.
func newTemplate(t testing.TB, tmpl string, selectors ...string) *entry.Entry {
	t.Helper()
	tm, err := entry.ParseTemplate(td, tmpl)
	if err != nil {
		t.Fatal(err)
	}
	e := &entry.Entry{ID: entry.NewID(), SPIFFEID: tm.Prefix(), Template: tmpl, ParentID: agent, Selectors: sels(t, selectors...)}
	e.Normalize()
	if err := e.Validate(td); err != nil {
		t.Fatal(err)
	}
	return e
}

func caller(t testing.TB, uid int, user string) []entry.Selector {
	return sels(t, fmt.Sprintf("unix:uid:%d", uid), "unix:gid:1000", "unix:user:"+user)
}

// signWanted signs every wanted entry as the agent would, by the entry
// the cache gives for the ID.
func signWanted(t *testing.T, c *svidcache.Cache, ca *testCA, now time.Time) []string {
	t.Helper()
	ids := c.TakeWanted()
	slices.Sort(ids)
	for _, id := range ids {
		e, ok := c.Entry(id)
		if !ok {
			t.Fatalf("wanted entry %s is unknown", id)
		}
		if err := c.SetX509SVID(ca.svid(t, e, now, time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

func svidIDs(svids []*svidcache.X509SVID) []string {
	out := make([]string, len(svids))
	for i, s := range svids {
		out[i] = s.ID.String()
	}
	return out
}

// servedTemplate applies template entry tm to a new cache and returns the
// cache, its CA, and the subscription of alice (uid 2000, gid 1000),
// which holds her signed instance (drained).
func servedTemplate(t *testing.T, tm *entry.Entry) (*svidcache.Cache, *testCA, *svidcache.Subscription) {
	t.Helper()
	ca := newTestCA(t, t0)
	c := newCache(t, fakeclock.New(t0), nil)
	c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{tm}, Bundle: ca.bundle})
	sub := c.Subscribe(caller(t, 2000, "alice"))
	t.Cleanup(sub.Close)
	waitWanted(t, c)
	signWanted(t, c, ca, t0)
	if n := len(sub.State().X509SVIDs); n != 1 {
		t.Fatalf("alice holds %d SVIDs", n)
	}
	drain(sub)
	return c, ca, sub
}

// aliceJWTTemplate returns a cache with a template entry that gives alice
// her ID, whose JWT-SVIDs are signed by a signer that waits for gate if
// it is not nil.
func aliceJWTTemplate(t *testing.T, gate chan struct{}) (*svidcache.Cache, *jwtSigner, spiffeid.ID) {
	t.Helper()
	clk := fakeclock.New(t0)
	ca := newTestCA(t, t0)
	tm := newTemplate(t, "spiffe://example.org/user/{{unix.user}}", "unix:gid:1000")
	alice := spiffeid.RequireFromString("spiffe://example.org/user/alice")
	s := &jwtSigner{ca: ca, clk: clk, ttl: 5 * time.Minute, ids: map[string]spiffeid.ID{entry.InstanceID(tm.ID, alice): alice}, gate: gate}
	c := newCache(t, clk, s)
	c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{tm}, Bundle: ca.bundle})
	return c, s, alice
}

// TestTemplateOneIDPerCaller: one template entry gives each matching
// caller its own ID, signed on demand; callers outside its selectors or
// whose values are no valid segment get nothing.
func TestTemplateOneIDPerCaller(t *testing.T) {
	clk := fakeclock.New(t0)
	ca := newTestCA(t, t0)
	var logs syncBuffer
	c, err := svidcache.New(svidcache.Config{TrustDomain: td, Clock: clk, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	tm := newTemplate(t, "spiffe://example.org/user/{{unix.user}}", "unix:gid:1000")
	res := c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{tm}, Bundle: ca.bundle})
	if len(res.Sign)+len(res.New)+len(res.Backlog) != 0 {
		t.Fatalf("a template entry is to be signed itself: %+v", res)
	}
	users := []string{"alice", "bob", "carol"}
	subs := make([]*svidcache.Subscription, len(users))
	for i, u := range users {
		subs[i] = c.Subscribe(caller(t, 2000+i, u))
		defer subs[i].Close()
	}
	outside := c.Subscribe(sels(t, "unix:uid:3000", "unix:gid:2000", "unix:user:dave"))
	defer outside.Close()
	// A name that is no valid segment (possible from an attestor, not
	// from ParseSelector).
	bad := c.Subscribe([]entry.Selector{{Type: "unix", Value: "gid:1000"}, {Type: "unix", Value: "user:a%2Fb"}})
	defer bad.Close()

	waitWanted(t, c)
	signed := signWanted(t, c, ca, t0)
	if len(signed) != 3 {
		t.Fatalf("signed %v, want one instance per user", signed)
	}
	for i, u := range users {
		got := svidIDs(subs[i].State().X509SVIDs)
		if want := []string{"spiffe://example.org/user/" + u}; !slices.Equal(got, want) {
			t.Errorf("%s sees %v, want %v", u, got, want)
		}
	}
	if got := outside.State().X509SVIDs; len(got) != 0 {
		t.Errorf("caller outside the group sees %v", svidIDs(got))
	}
	if got := bad.State().X509SVIDs; len(got) != 0 {
		t.Errorf("caller with an invalid name sees %v", svidIDs(got))
	}
	if l := logs.String(); strings.Count(l, "template gives the caller no identity") != 1 || !strings.Contains(l, "unix.user") || strings.Contains(l, "a%2Fb") {
		t.Errorf("want one log record naming the field, not the value:\n%s", l)
	}
	if st := c.Stats(); st.Entries != 4 || st.TemplateInstances != 3 {
		t.Errorf("stats %+v, want 1 entry and 3 instances", st)
	}
	is := c.TemplatesIssued()
	if len(is) != 1 || is[0].EntryID != tm.ID || len(is[0].SPIFFEIDs) != 3 {
		t.Errorf("TemplatesIssued = %+v", is)
	}
	// Instance IDs name the template and the filled ID.
	tid, sid, ok := entry.SplitInstanceID(subs[0].State().X509SVIDs[0].EntryID)
	if !ok || tid != tm.ID || sid != "spiffe://example.org/user/alice" {
		t.Errorf("instance ID splits into %q %q %v", tid, sid, ok)
	}
}

// TestTemplateChangeAndDelete: a changed template drops its instances'
// SVIDs at once and fills new IDs; deleting it removes them.
func TestTemplateChangeAndDelete(t *testing.T) {
	tm := newTemplate(t, "spiffe://example.org/user/{{unix.user}}", "unix:gid:1000")
	c, ca, sub := servedTemplate(t, tm)
	first := sub.State().X509SVIDs

	// The same entry again (a full sync after reconnecting) keeps it.
	res := c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{tm}})
	if len(res.Removed) != 0 || len(sub.State().X509SVIDs) != 1 {
		t.Fatalf("an unchanged template dropped its instances: %+v", res)
	}

	changed := tm.Clone()
	changed.Template = "spiffe://example.org/uid/{{unix.uid}}"
	changed.SPIFFEID = spiffeid.RequireFromString("spiffe://example.org/uid")
	res = c.Apply(svidcache.Update{Entries: []*entry.Entry{changed}})
	if !slices.Contains(res.Removed, first[0].EntryID) {
		t.Errorf("Removed %v lacks the old instance", res.Removed)
	}
	select {
	case <-sub.Changed():
	default:
		t.Fatal("subscriber not told of the template change")
	}
	if got := sub.State().X509SVIDs; len(got) != 0 {
		t.Fatalf("old ID still served after the template changed: %v", svidIDs(got))
	}
	waitWanted(t, c)
	signWanted(t, c, ca, t0)
	if got := svidIDs(sub.State().X509SVIDs); !slices.Equal(got, []string{"spiffe://example.org/uid/2000"}) {
		t.Fatalf("after the change: %v", got)
	}
	drain(sub)

	c.Apply(svidcache.Update{Deleted: []string{tm.ID}})
	select {
	case <-sub.Changed():
	default:
		t.Fatal("subscriber not told of the deletion")
	}
	if got := sub.State().X509SVIDs; len(got) != 0 {
		t.Fatalf("SVID served after the template was deleted: %v", svidIDs(got))
	}
	if st := c.Stats(); st.Entries != 0 || st.TemplateInstances != 0 || st.X509SVIDs != 0 {
		t.Errorf("stats after deletion %+v", st)
	}
}

func waitWanted(t *testing.T, c *svidcache.Cache) {
	t.Helper()
	select {
	case <-c.Wanted():
	case <-time.After(5 * time.Second):
		t.Fatal("nothing wanted")
	}
}

func drain(s *svidcache.Subscription) {
	select {
	case <-s.Changed():
	default:
	}
}

// TestTemplateUpdatedInPlace: a change to what instances carry (TTL,
// DNS names) signs them again and keeps serving their SVIDs meanwhile,
// unless an SVID names a DNS name the template no longer gives.
func TestTemplateUpdatedInPlace(t *testing.T) {
	tm := newTemplate(t, "spiffe://example.org/user/{{unix.user}}", "unix:gid:1000")
	tm.DNSNames = []string{"a.example.org"}
	c, ca, sub := servedTemplate(t, tm)
	inst := sub.State().X509SVIDs[0].EntryID

	step := func(what string, change func(e *entry.Entry), served bool) {
		t.Helper()
		e := tm.Clone()
		change(e)
		tm = e
		res := c.Apply(svidcache.Update{Entries: []*entry.Entry{e}})
		if !slices.Equal(res.Sign, []string{inst}) || len(res.Removed) != 0 {
			t.Fatalf("%s: %+v, want the instance signed again, nothing removed", what, res)
		}
		got := sub.State().X509SVIDs
		if served && (len(got) != 1 || got[0].EntryID != inst) {
			t.Fatalf("%s: the old SVID is not served meanwhile", what)
		}
		if !served && len(got) != 0 {
			t.Fatalf("%s: an SVID naming a DNS name the template no longer gives is served", what)
		}
		ie, ok := c.Entry(inst)
		if !ok || ie.X509SVIDTTL != e.X509SVIDTTL || !slices.Equal(ie.DNSNames, e.DNSNames) {
			t.Fatalf("%s: instance entry %+v", what, ie)
		}
		if err := c.SetX509SVID(ca.svid(t, ie, t0, time.Hour)); err != nil {
			t.Fatalf("%s: the new SVID: %v", what, err)
		}
		drain(sub)
	}
	step("TTL changed", func(e *entry.Entry) { e.X509SVIDTTL = 2 * time.Hour }, true)
	step("DNS name added", func(e *entry.Entry) { e.DNSNames = []string{"a.example.org", "b.example.org"} }, true)
	step("DNS name removed", func(e *entry.Entry) { e.DNSNames = []string{"b.example.org"} }, false)

	// Deleting it in the update that changes it takes the instance out
	// of what is to be signed.
	again := tm.Clone()
	again.X509SVIDTTL = 3 * time.Hour
	if res := c.Apply(svidcache.Update{Entries: []*entry.Entry{again}, Deleted: []string{again.ID}}); len(res.Sign) != 0 {
		t.Fatalf("updated and deleted at once: Sign %v", res.Sign)
	}
}

// TestTemplateSelectorsChanged: a template whose selectors change keeps
// serving the callers that still match, with the SVIDs they hold, and
// stops serving those that no longer do; callers that now match are
// served.
func TestTemplateSelectorsChanged(t *testing.T) {
	clk := fakeclock.New(t0)
	ca := newTestCA(t, t0)
	c := newCache(t, clk, nil)
	tm := newTemplate(t, "spiffe://example.org/user/{{unix.user}}", "unix:gid:1000")
	c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{tm}, Bundle: ca.bundle})
	alice := c.Subscribe(caller(t, 2000, "alice"))
	defer alice.Close()
	bob := c.Subscribe(caller(t, 2001, "bob"))
	defer bob.Close()
	carol := c.Subscribe(sels(t, "unix:uid:2002", "unix:gid:2000", "unix:user:carol"))
	defer carol.Close()
	waitWanted(t, c)
	signWanted(t, c, ca, t0)
	held := alice.State().X509SVIDs
	if len(held) != 1 || len(bob.State().X509SVIDs) != 1 || len(carol.State().X509SVIDs) != 0 {
		t.Fatal("before the change: alice and bob served, carol not")
	}
	drain(alice)
	drain(bob)
	drain(carol)

	// Only alice matches the new selectors.
	moved := tm.Clone()
	moved.Selectors = sels(t, "unix:user:alice")
	if res := c.Apply(svidcache.Update{Entries: []*entry.Entry{moved}}); len(res.Removed)+len(res.Sign) != 0 {
		t.Fatalf("selector change: %+v", res)
	}
	for name, sub := range map[string]*svidcache.Subscription{"alice": alice, "bob": bob} {
		select {
		case <-sub.Changed():
		default:
			t.Errorf("%s not told of the selector change", name)
		}
	}
	if got := alice.State().X509SVIDs; len(got) != 1 || got[0] != held[0] {
		t.Fatalf("alice, still matching: %v, want the SVID she held", svidIDs(got))
	}
	if got := bob.State().X509SVIDs; len(got) != 0 {
		t.Fatalf("bob, no longer matching, is served %v", svidIDs(got))
	}
	if got := c.Identities(caller(t, 2001, "bob")); len(got) != 0 {
		t.Fatalf("bob's identities %v", got)
	}

	// Back to a selector carol matches too: she gets her own ID.
	wider := moved.Clone()
	wider.Selectors = sels(t, "unix:gid:2000")
	c.Apply(svidcache.Update{Entries: []*entry.Entry{wider}})
	if got := alice.State().X509SVIDs; len(got) != 0 {
		t.Fatalf("alice (gid 1000) is served %v under gid 2000", svidIDs(got))
	}
	carol.State()
	waitWanted(t, c)
	signWanted(t, c, ca, t0)
	if got := svidIDs(carol.State().X509SVIDs); !slices.Equal(got, []string{"spiffe://example.org/user/carol"}) {
		t.Fatalf("carol: %v", got)
	}
}

// TestTemplateCallersGone: instances of callers that left keep their SVID
// only within the bound on unmatched SVIDs, and go with it.
func TestTemplateCallersGone(t *testing.T) {
	const bound, n = 5, 40
	clk := fakeclock.New(t0)
	ca := newTestCA(t, t0)
	c := boundedCache(t, clk, bound)
	tm := newTemplate(t, "spiffe://example.org/uid/{{unix.uid}}", "unix:gid:1000")
	c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{tm}, Bundle: ca.bundle})
	for i := range n {
		sub := c.Subscribe(caller(t, 5000+i, fmt.Sprintf("u%d", i)))
		waitWanted(t, c)
		signWanted(t, c, ca, t0)
		if len(sub.State().X509SVIDs) != 1 {
			t.Fatalf("caller %d got no SVID", i)
		}
		sub.Close()
		if st := c.Stats(); st.X509SVIDs > bound || st.TemplateInstances > bound+1 {
			t.Fatalf("after %d callers left: %+v (bound %d)", i+1, st, bound)
		}
	}
	if is := c.TemplatesIssued(); len(is) != 1 || len(is[0].SPIFFEIDs) != bound {
		t.Errorf("TemplatesIssued = %+v, want the %d kept", is, bound)
	}
}

// TestTemplateBaseSharesInstance: two callers filling the same ID from
// different paths (the base filter) share one instance, and both hear
// of its SVID.
func TestTemplateBaseSharesInstance(t *testing.T) {
	clk := fakeclock.New(t0)
	ca := newTestCA(t, t0)
	c := newCache(t, clk, nil)
	tm := newTemplate(t, "spiffe://example.org/svc/{{unix.path | base}}", "unix:gid:1000")
	c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{tm}, Bundle: ca.bundle})
	a := c.Subscribe(sels(t, "unix:gid:1000", "unix:path:/a/web"))
	defer a.Close()
	b := c.Subscribe(sels(t, "unix:gid:1000", "unix:path:/b/web"))
	defer b.Close()
	// Injection: a path with a '..' element fills only its base.
	d := c.Subscribe([]entry.Selector{{Type: "unix", Value: "gid:1000"}, {Type: "unix", Value: "path:/x/../.."}})
	defer d.Close()
	waitWanted(t, c)
	drain(a)
	drain(b)
	if got := signWanted(t, c, ca, t0); len(got) != 1 {
		t.Fatalf("signed %v, want one shared instance", got)
	}
	for _, s := range []*svidcache.Subscription{a, b} {
		select {
		case <-s.Changed():
		default:
			t.Fatal("a caller of the shared instance was not told of its SVID")
		}
		if got := svidIDs(s.State().X509SVIDs); !slices.Equal(got, []string{"spiffe://example.org/svc/web"}) {
			t.Errorf("got %v", got)
		}
	}
	if got := d.State().X509SVIDs; len(got) != 0 {
		t.Errorf("a '..' path got %v", svidIDs(got))
	}
}

// TestTemplateNodeSelectors: node.* fields come from the agent's node
// selectors; changing them refills.
func TestTemplateNodeSelectors(t *testing.T) {
	clk := fakeclock.New(t0)
	ca := newTestCA(t, t0)
	c := newCache(t, clk, nil)
	tm := newTemplate(t, "spiffe://example.org/node/{{node.x509pop.subject.cn}}/uid/{{unix.uid}}", "unix:gid:1000")
	c.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{tm}, Bundle: ca.bundle})
	sub := c.Subscribe(caller(t, 2000, "alice"))
	defer sub.Close()
	if got := c.Identities(caller(t, 2000, "alice")); len(got) != 0 {
		t.Fatalf("identities without node selectors: %v", got)
	}
	c.SetNodeSelectors([]entry.Selector{{Type: "x509pop", Value: "subject:cn:n1"}})
	// The subscriber is told, reads, and so asks for the new instance.
	<-sub.Changed()
	if len(sub.State().X509SVIDs) != 0 {
		t.Fatal("an SVID before signing")
	}
	waitWanted(t, c)
	signWanted(t, c, ca, t0)
	if got := svidIDs(sub.State().X509SVIDs); !slices.Equal(got, []string{"spiffe://example.org/node/n1/uid/2000"}) {
		t.Fatalf("got %v", got)
	}
	// Node selectors that fill the same ID (a renewed certificate, a new
	// serial) keep the instance and its SVID.
	if gone := c.SetNodeSelectors([]entry.Selector{{Type: "x509pop", Value: "subject:cn:n1"}, {Type: "x509pop", Value: "serialnumber:02"}}); len(gone) != 0 {
		t.Fatalf("SetNodeSelectors with the same CN dropped %v", gone)
	}
	if got := svidIDs(sub.State().X509SVIDs); !slices.Equal(got, []string{"spiffe://example.org/node/n1/uid/2000"}) {
		t.Fatalf("after the same CN: %v", got)
	}
	if gone := c.SetNodeSelectors([]entry.Selector{{Type: "x509pop", Value: "subject:cn:n2"}}); len(gone) != 1 {
		t.Fatalf("SetNodeSelectors dropped %v", gone)
	}
	if got := sub.State().X509SVIDs; len(got) != 0 {
		t.Fatalf("old node ID still served: %v", svidIDs(got))
	}
	got := c.Identities(caller(t, 2000, "alice"))
	if len(got) != 1 || got[0].ID.String() != "spiffe://example.org/node/n2/uid/2000" {
		t.Fatalf("identities %v", got)
	}
}

// TestTemplateJWT: JWT-SVIDs are fetched by instance ID like any entry.
func TestTemplateJWT(t *testing.T) {
	c, _, alice := aliceJWTTemplate(t, nil)
	ids := c.Identities(caller(t, 2000, "alice"))
	if len(ids) != 1 || ids[0].ID != alice {
		t.Fatalf("identities %v", ids)
	}
	j, err := c.FetchJWTSVID(context.Background(), ids[0].EntryID, []string{"db"})
	if err != nil {
		t.Fatal(err)
	}
	if j.ID != alice {
		t.Errorf("JWT-SVID for %s", j.ID)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestTemplateFlagsKeepInstances: the admin and downstream flags change
// nothing an instance is filled from: its SVID stays, its workloads are
// told (a downstream caller's rights changed).
func TestTemplateFlagsKeepInstances(t *testing.T) {
	tm := newTemplate(t, "spiffe://example.org/user/{{unix.user}}", "unix:gid:1000")
	c, _, sub := servedTemplate(t, tm)
	for _, flip := range []func(e *entry.Entry){
		func(e *entry.Entry) { e.Admin = true },
		func(e *entry.Entry) { e.Downstream = true },
	} {
		drain(sub)
		e := tm.Clone()
		flip(e)
		tm = e
		if res := c.Apply(svidcache.Update{Entries: []*entry.Entry{e}}); len(res.Removed)+len(res.Sign) != 0 {
			t.Fatalf("flag change: %+v", res)
		}
		if n := len(sub.State().X509SVIDs); n != 1 {
			t.Fatalf("flag change: %d SVIDs served", n)
		}
	}
	select {
	case <-sub.Changed():
	default:
		t.Error("subscriber not told of the downstream change")
	}
	if ids := c.Identities(caller(t, 2000, "alice")); len(ids) != 1 || !ids[0].Downstream {
		t.Errorf("identities after the downstream change: %+v", ids)
	}
}

// TestTemplateJWTInstanceKeptWhileSigning: a caller that only fetches
// JWT-SVIDs holds no subscription; its instance is not collected while
// its token is being signed, however many other selector sets are
// looked up meanwhile.
func TestTemplateJWTInstanceKeptWhileSigning(t *testing.T) {
	gate := make(chan struct{})
	c, s, _ := aliceJWTTemplate(t, gate)
	idents := c.Identities(caller(t, 2000, "alice"))
	if len(idents) != 1 {
		t.Fatalf("identities %v", idents)
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.FetchJWTSVID(context.Background(), idents[0].EntryID, []string{"db"})
		done <- err
	}()
	for s.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	for i := range 1100 { // more than the memoized sets
		c.Identities(sels(t, fmt.Sprintf("unix:uid:%d", 10000+i)))
	}
	close(gate)
	if err := <-done; err != nil {
		t.Fatalf("FetchJWTSVID: %v", err)
	}
}
