package datastore

import (
	"context"
	"errors"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/entry"
)

var (
	// ErrNotFound means the record does not exist.
	ErrNotFound = errors.New("datastore: not found")
	// ErrAlreadyExists means a record with the same key, or a duplicate
	// entry (same SPIFFE ID, parent ID and selectors), exists.
	ErrAlreadyExists = errors.New("datastore: already exists")
	// ErrExpired means a join token was found but had expired; it is
	// removed all the same.
	ErrExpired = errors.New("datastore: expired")
	// ErrEventsPruned means events after the requested revision are no
	// longer kept; the caller must reload a Snapshot.
	ErrEventsPruned = errors.New("datastore: events pruned")
	// ErrInUse means another process holds the datastore open.
	ErrInUse = errors.New("datastore: in use by another process")
	// ErrCorrupt means the stored data cannot be read.
	ErrCorrupt = errors.New("datastore: corrupt")
	// ErrUnavailable means the datastore cannot be reached for now (a
	// database server is down or the connection to it was lost); the
	// same call may succeed later, on the same Store.
	ErrUnavailable = errors.New("datastore: unavailable")
)

// Store is the CA server's persistent state. All methods are safe for
// concurrent use. Every write that returns without error is durable.
//
// Several Store handles may share one database (several CA servers on one
// PostgreSQL database, for instance): every guarantee below then holds
// across handles as it does within one.
//
// Changes of entries, agents and bundles take revisions, which become
// visible in commit order: once a reader has seen revision n (through
// Events, Snapshot or a returned Entry.Revision), it never afterwards
// finds a change with a revision at or below n that it did not see. A
// reader can therefore follow the store with Events from the last
// revision it applied.
//
// Watch is a hint to do that catch-up read, not the change feed itself:
// on a signal a consumer reads Events after its last revision. A signal
// may be late, spurious or coalesced, and a backend whose change feed
// from other handles broke signals again once it is restored, so that
// consumers re-read whatever they may have missed.
type Store interface {
	// CreateEntries stores new entries in one transaction. An entry with
	// an empty ID is given one. The result has one EntryResult per input,
	// in order; an entry that fails (ErrAlreadyExists) does not stop the
	// others. The error is for failures of the whole batch.
	CreateEntries(ctx context.Context, entries []*entry.Entry) ([]EntryResult, error)
	FetchEntry(ctx context.Context, id string) (*entry.Entry, error)
	ListEntries(ctx context.Context, f EntryFilter) ([]*entry.Entry, error)
	// UpdateEntry atomically reads the entry with this ID (ErrNotFound if
	// none), lets fn change a copy of it and stores the result with a new
	// revision (ErrAlreadyExists if the change makes it a duplicate).
	// Concurrent updates, from this or another handle, never lose each
	// other's changes. fn must be quick and must not call the store; if it
	// returns an error nothing is written and that error is returned
	// (wrapped). fn may not change the ID; what it sets in Revision is
	// ignored.
	UpdateEntry(ctx context.Context, id string, fn func(*entry.Entry) error) (*entry.Entry, error)
	// DeleteEntry removes the entry and returns it as it was.
	DeleteEntry(ctx context.Context, id string) (*entry.Entry, error)

	CreateAgent(ctx context.Context, a *Agent) error
	FetchAgent(ctx context.Context, id spiffeid.ID) (*Agent, error)
	ListAgents(ctx context.Context) ([]*Agent, error)
	// UpdateAgent atomically reads the agent (ErrNotFound if none), lets fn
	// change it and stores the result; concurrent updates never lose each
	// other's changes (a renewal cannot undo a ban). fn must be quick and
	// must not call the store; if it returns an error nothing is written
	// and that error is returned. fn may not change the SPIFFE ID.
	UpdateAgent(ctx context.Context, id spiffeid.ID, fn func(*Agent) error) (*Agent, error)
	// DeleteAgent removes the agent and returns it as it was.
	DeleteAgent(ctx context.Context, id spiffeid.ID) (*Agent, error)

	// CreateJoinToken stores a token by its hash (ErrAlreadyExists on a
	// repeated hash).
	CreateJoinToken(ctx context.Context, t *JoinToken) error
	// ConsumeJoinToken removes the token with this hash and returns it.
	// Exactly one of any number of concurrent callers succeeds. An expired
	// token (ExpiresAt not after now) is removed and ErrExpired returned.
	ConsumeJoinToken(ctx context.Context, hash string, now time.Time) (*JoinToken, error)
	// PruneJoinTokens removes tokens that expired before now.
	PruneJoinTokens(ctx context.Context, now time.Time) (int, error)

	FetchBundle(ctx context.Context, td spiffeid.TrustDomain) (*spiffebundle.Bundle, error)
	ListBundles(ctx context.Context) ([]*spiffebundle.Bundle, error)
	// UpdateBundle reads the bundle of td (nil if there is none), passes it
	// to fn and stores what fn returns, atomically: concurrent updates,
	// from this or another server, never lose each other's changes. If fn
	// returns an error nothing is written and that error is returned. fn
	// may run more than once (a backend may retry it after a conflict), so
	// it must have no side effects.
	UpdateBundle(ctx context.Context, td spiffeid.TrustDomain, fn func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error)) (*spiffebundle.Bundle, error)
	DeleteBundle(ctx context.Context, td spiffeid.TrustDomain) error

	// PutCAKey creates or replaces the metadata of one CA key.
	PutCAKey(ctx context.Context, k *CAKey) error
	ListCAKeys(ctx context.Context) ([]*CAKey, error)
	DeleteCAKey(ctx context.Context, id string) error

	// PutServer creates or replaces the record of the server with s.ID.
	// It records no event and wakes no watcher: it is a heartbeat, not a
	// change agents see.
	PutServer(ctx context.Context, s *Server) error
	// ListServers returns every server record, in ID order.
	ListServers(ctx context.Context) ([]*Server, error)

	// PutFederation creates or replaces the federation relationship with
	// r.TrustDomain.
	PutFederation(ctx context.Context, r *Federation) error
	// ListFederations returns every federation relationship, in trust
	// domain order.
	ListFederations(ctx context.Context) ([]*Federation, error)
	// DeleteFederation removes the relationship with td (ErrNotFound if
	// there is none). The trust domain's bundle stays.
	DeleteFederation(ctx context.Context, td spiffeid.TrustDomain) error

	// PutOAuthClient creates or replaces the OAuth client c.SPIFFEID.
	PutOAuthClient(ctx context.Context, c *OAuthClient) error
	// FetchOAuthClient returns the OAuth client id (ErrNotFound if none).
	FetchOAuthClient(ctx context.Context, id spiffeid.ID) (*OAuthClient, error)
	// ListOAuthClients returns every OAuth client, in SPIFFE ID order.
	ListOAuthClients(ctx context.Context) ([]*OAuthClient, error)
	// DeleteOAuthClient removes the OAuth client id (ErrNotFound if none).
	DeleteOAuthClient(ctx context.Context, id spiffeid.ID) error
	// UseClientAssertion records a JWT client assertion's jti (hashed by
	// the caller) until expiresAt. ErrAlreadyExists means it was already
	// used: of concurrent callers with one hash, through any number of
	// handles, exactly one succeeds. It records no event.
	UseClientAssertion(ctx context.Context, hash string, expiresAt time.Time) error
	// PruneClientAssertions forgets the assertions whose expiresAt is not
	// after now and returns how many.
	PruneClientAssertions(ctx context.Context, now time.Time) (int, error)
	// PutRevocation stores r, replacing a revocation with the same JTI or
	// ClientID, records an event of kind EventRevocation (Key
	// RevocationKey(r)) and wakes the watchers.
	PutRevocation(ctx context.Context, r *Revocation) error
	// ListRevocations returns the revocations whose ExpiresAt is after
	// now, in key order.
	ListRevocations(ctx context.Context, now time.Time) ([]*Revocation, error)
	// PruneRevocations removes the revocations whose ExpiresAt is not
	// after now and returns how many. It records no event: every holder
	// of the list drops them at ExpiresAt by itself.
	PruneRevocations(ctx context.Context, now time.Time) (int, error)

	// Events returns up to limit events with revisions above after, in
	// revision order. ErrEventsPruned means some were dropped.
	Events(ctx context.Context, after uint64, limit int) ([]Event, error)
	// Snapshot returns every entry and the revision they are current at.
	Snapshot(ctx context.Context) (*Snapshot, error)
	// Watch returns a channel that receives a value after each change is
	// committed, through this handle or another sharing the database
	// (coalesced: buffered one, never blocking the writer), and a function
	// that stops the watch. It also receives a value when a broken change
	// feed is restored; see the Store comment.
	Watch() (<-chan struct{}, func())

	Close() error
}

// EntryResult is the outcome for one entry of CreateEntries.
type EntryResult struct {
	Entry *entry.Entry
	Err   error
}

// EntryFilter selects entries. Zero fields match everything; set fields
// must all match.
type EntryFilter struct {
	SPIFFEID spiffeid.ID
	ParentID spiffeid.ID
	// Selectors: entries that have every one of these selectors.
	Selectors []entry.Selector
}

// Agent is an attested node agent.
type Agent struct {
	SPIFFEID spiffeid.ID
	// AttestationType names how the agent proved its node ("join_token",
	// "x509pop", "sshpop").
	AttestationType string
	// Selectors are the node selectors its attestation found, sorted and
	// without duplicates: entries parented to a node alias whose
	// selectors are all among them are the agent's too.
	Selectors []entry.Selector
	// SerialNumber is the serial of the agent's current SVID (decimal);
	// only a certificate with this serial (or the previous one, during
	// renewal) authenticates the agent.
	SerialNumber     string
	PrevSerialNumber string
	CertNotAfter     time.Time
	// Banned agents are refused and cannot re-attest until unbanned.
	Banned    bool
	CreatedAt time.Time
	UpdatedAt time.Time
}

// JoinToken is a one-time secret that attests an agent as SPIFFEID. Only
// the token's hash is stored.
type JoinToken struct {
	Hash      string
	SPIFFEID  spiffeid.ID
	ExpiresAt time.Time
	CreatedAt time.Time
}

// CAKeyKind tells X.509 CA keys from JWT signing keys.
type CAKeyKind string

const (
	CAKeyX509 CAKeyKind = "x509"
	CAKeyJWT  CAKeyKind = "jwt"
)

// CAKeyState is where a CA key is in its rotation.
type CAKeyState string

const (
	// CAKeyPrepared keys are published in the bundle but do not sign yet.
	CAKeyPrepared CAKeyState = "prepared"
	// CAKeyActive keys sign.
	CAKeyActive CAKeyState = "active"
	// CAKeyRetired keys no longer sign and stay in the bundle until what
	// they signed has expired.
	CAKeyRetired CAKeyState = "retired"
	// CAKeyTainted keys must no longer be relied on: they never sign
	// again, and what they signed is re-signed by another key.
	CAKeyTainted CAKeyState = "tainted"
)

// CAKey is the metadata of one CA signing key. The private key itself is
// kept by the key manager, never in the datastore.
type CAKey struct {
	// ID names the key; for JWT keys it is the kid.
	ID    string
	Kind  CAKeyKind
	State CAKeyState
	// ServerID names the server that holds the private key. Several
	// servers sharing a datastore each hold their own keys; a key's
	// record is changed only by its owner, except that an operator may
	// taint a retired key or revoke a tainted one through any server.
	ServerID string
	// KeyType is the key algorithm, such as "ec-p256".
	KeyType string
	// CertDER is the CA certificate (X.509 keys), followed by the
	// intermediates above it up to, not including, the trust anchor
	// (concatenated DER; none for a self-signed CA).
	CertDER []byte
	// PublicKeyDER is the PKIX public key (JWT keys).
	PublicKeyDER []byte
	NotBefore    time.Time
	NotAfter     time.Time
	// SignedUntil is when the key stopped signing: set when an Active key
	// retires, and to NotBefore when a Prepared key (which never signed)
	// is tainted. Zero while the key may still sign, and for records
	// written before Writ kept it (then only NotAfter bounds what the
	// key signed).
	SignedUntil time.Time
}

// Federation is a federation relationship: a trust domain whose bundle
// the servers fetch from its SPIFFE bundle endpoint and keep in the
// datastore.
type Federation struct {
	TrustDomain spiffeid.TrustDomain
	// BundleEndpointURL is the https URL of the trust domain's bundle
	// endpoint.
	BundleEndpointURL string
	// Profile is "https_spiffe" (the endpoint authenticates with an
	// X.509-SVID of EndpointSPIFFEID, verified against the trust domain's
	// stored bundle) or "https_web" (Web PKI).
	Profile          string
	EndpointSPIFFEID spiffeid.ID
	CreatedAt        time.Time
	UpdatedAt        time.Time
}

// Server is one CA server sharing the datastore, as it last reported
// itself. Servers write their own record at start and then as a
// heartbeat; writing it records no event.
type Server struct {
	// ID is the server's stable identifier, kept in its data directory.
	ID string
	// Address is the node API address the server serves agents on.
	Address   string
	Version   string
	StartedAt time.Time
	// Heartbeat is when the server last reported itself.
	Heartbeat time.Time
}

// EventKind says what kind of record an Event is about.
type EventKind uint8

const (
	EventEntry EventKind = iota + 1
	EventAgent
	EventBundle
	// EventRevocation: a revocation was stored; Key is RevocationKey of it.
	EventRevocation
)

// Event records that one record changed at Revision.
type Event struct {
	Revision uint64
	Kind     EventKind
	// Key is the entry ID, agent SPIFFE ID, bundle trust domain name or
	// revocation key.
	Key string
	// Entry is, for entry events, the entry as it is now, or nil if it
	// has been deleted.
	Entry *entry.Entry
}

// Snapshot is every entry as of Revision.
type Snapshot struct {
	Entries  []*entry.Entry
	Revision uint64
}

// OAuthClient says which audiences and scopes a SPIFFE ID may get OAuth
// access tokens for. A SPIFFE ID without one gets none (deny by default).
type OAuthClient struct {
	SPIFFEID  spiffeid.ID
	Audiences []string // sorted, unique, at least one
	Scopes    []string // sorted, unique
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Revocation revokes one access token (JTI set) or every token issued to
// a client up to RevokedAt (ClientID set); exactly one of the two is set.
type Revocation struct {
	JTI string
	// ClientID is the client's SPIFFE ID as a string.
	ClientID  string
	RevokedAt time.Time
	// ExpiresAt is when the matching tokens have all expired: the record
	// leaves the list then.
	ExpiresAt time.Time
}
