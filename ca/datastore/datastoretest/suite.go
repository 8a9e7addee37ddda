package datastoretest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"reflect"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

// EventPruner is implemented by stores that can drop old events on
// demand. Run uses it to test datastore.ErrEventsPruned, and skips that
// test for stores without it.
type EventPruner interface {
	// PruneEvents drops all but the newest keep events.
	PruneEvents(ctx context.Context, keep int) error
}

// NewStoreFunc returns a new, empty store for one test. It should
// register the store's Close with t.Cleanup.
type NewStoreFunc func(t *testing.T) datastore.Store

// Run runs the conformance suite against the stores newStore makes, one
// fresh store per test. Tests do not run in parallel, so newStore may
// reuse one database between them.
func Run(t *testing.T, newStore func(t *testing.T) datastore.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, newStore NewStoreFunc)
	}{
		{"CreateEntries", testCreateEntries},
		{"CreateEntriesLargeBatch", testCreateEntriesLargeBatch},
		{"FetchEntry", testFetchEntry},
		{"ListEntries", testListEntries},
		{"UpdateEntry", testUpdateEntry},
		{"UpdateEntryConcurrent", onOne(testUpdateEntryFields)},
		{"DeleteEntry", testDeleteEntry},
		{"ConcurrentWriters", testConcurrentWriters},
		{"RevisionsInCommitOrder", onOne(testRevisionsInCommitOrder)},
		{"Agents", testAgents},
		{"AgentNodeSelectors", testAgentNodeSelectors},
		{"JoinTokens", testJoinTokens},
		{"ConsumeJoinTokenRace", testConsumeJoinTokenRace},
		{"Bundles", testBundles},
		{"UpdateBundleConcurrent", testUpdateBundleConcurrent},
		{"UpdateAgentConcurrent", testUpdateAgentConcurrent},
		{"CAKeys", testCAKeys},
		{"Servers", testServers},
		{"Federations", testFederations},
		{"OAuthClients", testOAuthClients},
		{"ClientAssertions", testClientAssertions},
		{"UseClientAssertionRace", onOne(testUseClientAssertionRace)},
		{"Revocations", testRevocations},
		{"Events", testEvents},
		{"EventsPruned", testEventsPruned},
		{"Snapshot", testSnapshot},
		{"SnapshotConsistentUnderWrites", testSnapshotConsistentUnderWrites},
		{"Watch", testWatch},
		{"ReturnsCopies", testReturnsCopies},
		{"ContextCanceled", testContextCanceled},
		{"CloseIdempotent", testCloseIdempotent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, newStore) })
	}
}

// Fixtures. Times are whole seconds in UTC, which every backend can store
// exactly.

var (
	td    = spiffeid.RequireTrustDomainFromString("example.org")
	fedTD = spiffeid.RequireTrustDomainFromString("federated.example")
	t0    = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

	errTest = errors.New("test error")
)

// waitTimeout bounds every wait for something that should happen
// promptly; it only matters when a store is broken.
const waitTimeout = 10 * time.Second

func id(path string) spiffeid.ID { return spiffeid.RequireFromPath(td, path) }

// selectors parses and sorts selectors.
func selectors(t testing.TB, ss ...string) []entry.Selector {
	t.Helper()
	out := make([]entry.Selector, 0, len(ss))
	for _, s := range ss {
		sel, err := entry.ParseSelector(s)
		if err != nil {
			t.Fatalf("bad selector fixture: %v", err)
		}
		out = append(out, sel)
	}
	slices.SortFunc(out, entry.Selector.Compare)
	return out
}

// newEntry returns an entry with every field set but ID and Revision.
func newEntry(t testing.TB, spiffeID, parentID string, sels ...string) *entry.Entry {
	t.Helper()
	return &entry.Entry{
		SPIFFEID:    id(spiffeID),
		ParentID:    id(parentID),
		Selectors:   selectors(t, sels...),
		X509SVIDTTL: time.Hour,
		JWTSVIDTTL:  5 * time.Minute,
		DNSNames:    []string{"svc.example.org"},
		Downstream:  true,
		CreatedAt:   t0,

		FederatesWith: []spiffeid.TrustDomain{spiffeid.RequireTrustDomainFromString("federated.test"), spiffeid.RequireTrustDomainFromString("other.test")},
	}
}

// create stores entries, all of which must succeed, and returns them as
// stored.
func create(t testing.TB, s datastore.Store, entries ...*entry.Entry) []*entry.Entry {
	t.Helper()
	results, err := s.CreateEntries(t.Context(), entries)
	if err != nil {
		t.Fatalf("CreateEntries: %v", err)
	}
	if len(results) != len(entries) {
		t.Fatalf("CreateEntries returned %d results for %d entries", len(results), len(entries))
	}
	out := make([]*entry.Entry, len(results))
	for i, r := range results {
		if r.Err != nil || r.Entry == nil {
			t.Fatalf("CreateEntries: entry %d: %v (entry %v)", i, r.Err, r.Entry)
		}
		out[i] = r.Entry
	}
	return out
}

func normTime(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC()
}

// normEntry returns a copy of e that compares equal with reflect.DeepEqual
// to any equivalent entry: times in UTC without monotonic readings, and
// empty slices nil.
func normEntry(e *entry.Entry) *entry.Entry {
	if e == nil {
		return nil
	}
	c := e.Clone()
	c.CreatedAt = normTime(c.CreatedAt)
	if len(c.Selectors) == 0 {
		c.Selectors = nil
	}
	if len(c.DNSNames) == 0 {
		c.DNSNames = nil
	}
	if len(c.FederatesWith) == 0 {
		c.FederatesWith = nil
	}
	return c
}

func entryEqual(a, b *entry.Entry) bool {
	return reflect.DeepEqual(normEntry(a), normEntry(b))
}

func requireEntry(t testing.TB, what string, want, got *entry.Entry) {
	t.Helper()
	if !entryEqual(want, got) {
		t.Fatalf("%s:\n got %+v\nwant %+v", what, got, want)
	}
}

// withoutStoreFields returns e without the fields the store sets.
func withoutStoreFields(e *entry.Entry) *entry.Entry {
	c := normEntry(e)
	c.ID = ""
	c.Revision = 0
	return c
}

// entryIDs returns the IDs of entries, sorted.
func entryIDs(entries []*entry.Entry) []string {
	ids := make([]string, len(entries))
	for i, e := range entries {
		ids[i] = e.ID
	}
	slices.Sort(ids)
	return ids
}

// requireSameEntries checks that got holds exactly want, in any order.
func requireSameEntries(t testing.TB, what string, want, got []*entry.Entry) {
	t.Helper()
	byID := make(map[string]*entry.Entry, len(got))
	for _, e := range got {
		if byID[e.ID] != nil {
			t.Fatalf("%s: entry %s listed twice", what, e.ID)
		}
		byID[e.ID] = e
	}
	if !slices.Equal(entryIDs(want), entryIDs(got)) {
		t.Fatalf("%s: got entries %v, want %v", what, entryIDs(got), entryIDs(want))
	}
	for _, w := range want {
		requireEntry(t, what+": entry "+w.ID, w, byID[w.ID])
	}
}

func listAll(t testing.TB, s datastore.Store) []*entry.Entry {
	t.Helper()
	got, err := s.ListEntries(t.Context(), datastore.EntryFilter{})
	if err != nil {
		t.Fatalf("ListEntries: %v", err)
	}
	return got
}

func requireErrorIs(t testing.TB, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got error %v, want %v", what, err, want)
	}
}

func requireNoError(t testing.TB, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// allEvents returns every event after rev.
func allEvents(t testing.TB, s datastore.Store, after uint64) []datastore.Event {
	t.Helper()
	evs, err := s.Events(t.Context(), after, 1_000_000)
	if err != nil {
		t.Fatalf("Events(%d): %v", after, err)
	}
	return evs
}

func latestRevision(t testing.TB, s datastore.Store) uint64 {
	t.Helper()
	snap, err := s.Snapshot(t.Context())
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	return snap.Revision
}

// Agents, tokens, keys and bundles.

func newAgent(path string) *datastore.Agent {
	return &datastore.Agent{
		SPIFFEID:         id(path),
		AttestationType:  "join_token",
		SerialNumber:     "1234567890",
		PrevSerialNumber: "987654321",
		CertNotAfter:     t0.Add(time.Hour),
		CreatedAt:        t0,
		UpdatedAt:        t0.Add(time.Minute),
	}
}

func normAgent(a *datastore.Agent) *datastore.Agent {
	if a == nil {
		return nil
	}
	c := *a
	c.CertNotAfter = normTime(c.CertNotAfter)
	c.CreatedAt = normTime(c.CreatedAt)
	c.UpdatedAt = normTime(c.UpdatedAt)
	if len(c.Selectors) == 0 {
		c.Selectors = nil
	}
	return &c
}

func requireAgent(t testing.TB, what string, want, got *datastore.Agent) {
	t.Helper()
	if !reflect.DeepEqual(normAgent(want), normAgent(got)) {
		t.Fatalf("%s:\n got %+v\nwant %+v", what, got, want)
	}
}

func normToken(tok *datastore.JoinToken) *datastore.JoinToken {
	if tok == nil {
		return nil
	}
	c := *tok
	c.ExpiresAt = normTime(c.ExpiresAt)
	c.CreatedAt = normTime(c.CreatedAt)
	return &c
}

func normCAKey(k *datastore.CAKey) *datastore.CAKey {
	if k == nil {
		return nil
	}
	c := *k
	c.NotBefore = normTime(c.NotBefore)
	c.NotAfter = normTime(c.NotAfter)
	c.SignedUntil = normTime(c.SignedUntil)
	if len(c.CertDER) == 0 {
		c.CertDER = nil
	}
	if len(c.PublicKeyDER) == 0 {
		c.PublicKeyDER = nil
	}
	return &c
}

// serial numbers the test CA certificates.
var serial atomic.Int64

// newCA returns a self-signed CA certificate for tdom and its key.
func newCA(t testing.TB, tdom spiffeid.TrustDomain) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial.Add(1)),
		Subject:               pkix.Name{CommonName: "test CA " + tdom.Name()},
		NotBefore:             t0.Add(-time.Hour),
		NotAfter:              t0.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{tdom.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func newJWTKey(t testing.TB) *ecdsa.PublicKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &key.PublicKey
}

// newBundle returns a bundle of tdom with one X.509 authority, one JWT
// authority, a refresh hint and a sequence number.
func newBundle(t testing.TB, tdom spiffeid.TrustDomain) *spiffebundle.Bundle {
	t.Helper()
	cert, _ := newCA(t, tdom)
	b := spiffebundle.New(tdom)
	b.AddX509Authority(cert)
	if err := b.AddJWTAuthority("kid-1", newJWTKey(t)); err != nil {
		t.Fatal(err)
	}
	b.SetRefreshHint(5 * time.Minute)
	b.SetSequenceNumber(7)
	return b
}

func requireBundle(t testing.TB, what string, want, got *spiffebundle.Bundle) {
	t.Helper()
	if !want.Equal(got) {
		t.Fatalf("%s: bundles differ:\n got %s\nwant %s", what, describeBundle(got), describeBundle(want))
	}
}

func describeBundle(b *spiffebundle.Bundle) string {
	if b == nil {
		return "<nil>"
	}
	var kids []string
	for kid := range b.JWTAuthorities() {
		kids = append(kids, kid)
	}
	slices.Sort(kids)
	hint, _ := b.RefreshHint()
	seq, _ := b.SequenceNumber()
	return fmt.Sprintf("{td %s, %d X.509 authorities, JWT keys %v, refresh %s, seq %d}", b.TrustDomain().Name(), len(b.X509Authorities()), kids, hint, seq)
}

// waitSignal waits for a value on ch.
func waitSignal(t testing.TB, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitTimeout):
		t.Fatalf("%s: no signal within %s", what, waitTimeout)
	}
}

// drain empties ch.
func drain(ch <-chan struct{}) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

// within runs fn and fails if it does not return within waitTimeout, for
// operations that must not block. fn runs on another goroutine, so it
// must report failures with t.Error, not t.Fatal.
func within(t testing.TB, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatalf("%s: still blocked after %s", what, waitTimeout)
	}
}

// replace stores e in place of the entry with e.ID, through UpdateEntry:
// every field but ID and Revision is taken from e.
func replace(ctx context.Context, s datastore.Store, e *entry.Entry) (*entry.Entry, error) {
	return s.UpdateEntry(ctx, e.ID, func(cur *entry.Entry) error {
		*cur = *e.Clone()
		return nil
	})
}
