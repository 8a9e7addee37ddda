package nodeapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"writ.dev/writ/ca/admin"
	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/jwtsvid"
	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/internal/metrics"
)

// Defaults for Config fields left zero. They match the server's defaults.
const (
	DefaultX509SVIDTTL = time.Hour
	DefaultJWTSVIDTTL  = 5 * time.Minute
	// DefaultDownstreamCATTL bounds a downstream CA's lifetime when its
	// entry sets no X.509-SVID TTL.
	DefaultDownstreamCATTL = 24 * time.Hour
)

// Limits on what one call may ask for.
const (
	// MaxBatchSign is the most X.509-SVIDs one BatchSignX509SVID may ask
	// for; a larger batch is refused with InvalidArgument.
	MaxBatchSign = 1000
	// MaxBatchSignJWT is the most JWT-SVIDs one BatchSignJWTSVID may ask
	// for; a larger batch is refused with InvalidArgument.
	MaxBatchSignJWT = 256
	// MaxAudiences is the most audiences a JWT-SVID may name (the agent's
	// Workload API applies the same bound).
	MaxAudiences = jwtsvid.MaxAudiences
	// MaxAudienceLength bounds each audience, in bytes.
	MaxAudienceLength = jwtsvid.MaxAudienceLength
	// maxJoinTokenLength bounds the join tokens Attest looks up; anything
	// longer is refused like any wrong token, without hashing it.
	maxJoinTokenLength = 256
)

// AttestationTypeJoinToken is the Agent.AttestationType of agents that
// attested with a join token.
const AttestationTypeJoinToken = "join_token"

// Store is the part of the datastore the node API uses.
//
// UpdateAgent reads the agent with this ID (datastore.ErrNotFound if there
// is none), passes a copy to fn, and stores what fn leaves in it,
// atomically: no other write to the agent comes between the read and the
// write. If fn returns an error nothing is written and that error is
// returned (possibly wrapped). It returns the agent as stored.
type Store interface {
	ConsumeJoinToken(ctx context.Context, hash string, now time.Time) (*datastore.JoinToken, error)

	CreateAgent(ctx context.Context, a *datastore.Agent) error
	FetchAgent(ctx context.Context, id spiffeid.ID) (*datastore.Agent, error)
	ListAgents(ctx context.Context) ([]*datastore.Agent, error)
	UpdateAgent(ctx context.Context, id spiffeid.ID, fn func(*datastore.Agent) error) (*datastore.Agent, error)

	FetchBundle(ctx context.Context, td spiffeid.TrustDomain) (*spiffebundle.Bundle, error)
	// ListBundles is read when the index loads, for the bundles of the
	// foreign trust domains that entries federate with.
	ListBundles(ctx context.Context) ([]*spiffebundle.Bundle, error)
	// ListCAKeys is read with each new bundle, for the tainted keys.
	ListCAKeys(ctx context.Context) ([]*datastore.CAKey, error)
	// PutCAKey and UpdateBundle record and publish the JWT keys of
	// downstream entries (PublishDownstreamJWTAuthority).
	PutCAKey(ctx context.Context, k *datastore.CAKey) error
	// DeleteCAKey undoes the record of a downstream JWT key whose key ID
	// another server published at the same time.
	DeleteCAKey(ctx context.Context, id string) error
	UpdateBundle(ctx context.Context, td spiffeid.TrustDomain, fn func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error)) (*spiffebundle.Bundle, error)

	Events(ctx context.Context, after uint64, limit int) ([]datastore.Event, error)
	Snapshot(ctx context.Context) (*datastore.Snapshot, error)
	Watch() (<-chan struct{}, func())

	// ListRevocations is read at load and after revocation events, for
	// the revocations pushed to agents.
	ListRevocations(ctx context.Context, now time.Time) ([]*datastore.Revocation, error)
}

// ParentTaint tells a nested server which X.509 authorities its parent
// deployment announced tainted (a *upstream.Writ).
type ParentTaint interface {
	// ParentTainted returns their subject key IDs, lowercase hex. It is
	// read with each new bundle: a change of the set must come with a
	// change of the bundle (its sequence number at least).
	ParentTainted() []string
}

// KeyManager supplies the keys that sign now.
type KeyManager interface {
	Active() *keymanager.Active
}

// Config configures a Service.
type Config struct {
	// TrustDomain is the server's trust domain. Required.
	TrustDomain spiffeid.TrustDomain
	// Store holds entries, agents, join tokens and the bundle. Required.
	Store Store
	// KeyManager signs every SVID. Required.
	KeyManager KeyManager
	// Clock is used for every certificate check, signature and timer,
	// including the TLS handshake. Defaults to the system clock.
	Clock clock.Clock
	// Logger receives the service's log. Defaults to discarding it.
	Logger *slog.Logger
	// DefaultX509SVIDTTL is the lifetime of agent SVIDs, of the server's
	// own TLS certificate, and of workload X.509-SVIDs whose entry sets
	// none. Defaults to DefaultX509SVIDTTL.
	DefaultX509SVIDTTL time.Duration
	// DefaultJWTSVIDTTL is the lifetime of JWT-SVIDs whose entry sets
	// none. Defaults to DefaultJWTSVIDTTL.
	DefaultJWTSVIDTTL time.Duration
	// NodeAttestors are the node attestation methods agents may use
	// besides join tokens, which are always accepted. Their types must
	// be distinct and not "join_token".
	NodeAttestors []NodeAttestor
	// DownstreamCATTL bounds the lifetime of the CAs and JWT keys of
	// downstream entries that set no X.509-SVID TTL. Defaults to
	// DefaultDownstreamCATTL.
	DownstreamCATTL time.Duration
	// Metrics receives the service's metrics (signatures, Sync streams,
	// join tokens, entry and agent counts). Nil records none.
	Metrics *metrics.Server
	// MaxAttestations bounds the node attestations (Attest and
	// AttestNode calls, which need no client certificate) in progress at
	// once; MaxAttestationsPerSource bounds those from one source IP
	// address (IPv6: network /64). Calls beyond either are refused at
	// once with ResourceExhausted and a RetryInfo detail; calls of
	// attested agents are never counted. They default to
	// DefaultMaxAttestations and DefaultMaxAttestationsPerSource; the
	// per-source bound is at most the server-wide one.
	MaxAttestations          int
	MaxAttestationsPerSource int
	// Parent, for a server nested under a parent Writ deployment, adds
	// the parent's tainted X.509 authorities to this server's own: agents
	// are told of them (SyncResponse.Tainted) and LocalX509Trust returns
	// them. Nil for none.
	Parent ParentTaint
}

// Service serves the node API (writ.node.v1.NodeService) over TLS. Create
// it with New, start it with Run, and serve it on a grpc.Server built with
// ServerOptions.
type Service struct {
	td       spiffeid.TrustDomain
	serverID spiffeid.ID
	store    Store
	km       KeyManager
	clock    clock.Clock
	log      *slog.Logger
	metrics  *metrics.Server
	x509TTL  time.Duration
	jwtTTL   time.Duration
	// downstreamTTL bounds downstream CAs of entries without an X.509 TTL.
	downstreamTTL time.Duration

	idx *index
	// reports are the agents' template reports (see ReportTemplates).
	reports templateReports

	// attestors are the node attestors by type, join_token included.
	attestors map[string]NodeAttestor
	// attestLimit bounds the attestations in progress.
	attestLimit *attestLimiter

	// cert is the server's current TLS certificate; nil until the first
	// one is signed.
	cert atomic.Pointer[serverCert]
	// renewKick asks the renewer to check the certificate now.
	renewKick chan struct{}

	// stopping is closed when Run's context ends, so that streams end.
	stopping chan struct{}

	ready      chan struct{}
	readyOnce  sync.Once
	idxLoaded  atomic.Bool
	certIssued atomic.Bool

	running atomic.Bool

	// publishMu serializes PublishDownstreamJWTAuthority's checks and
	// writes.
	publishMu sync.Mutex

	// jwtSigner is a signer for the active JWT key, made again when the
	// key changes (see activeJWTSigner).
	jwtSigner atomic.Pointer[jwtsvid.Signer]
}

// New returns a Service for cfg. It does no I/O and starts nothing.
func New(cfg Config) (*Service, error) {
	switch {
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("nodeapi: trust domain is required")
	case cfg.Store == nil:
		return nil, errors.New("nodeapi: store is required")
	case cfg.KeyManager == nil:
		return nil, errors.New("nodeapi: key manager is required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DefaultX509SVIDTTL == 0 {
		cfg.DefaultX509SVIDTTL = DefaultX509SVIDTTL
	}
	if cfg.DefaultJWTSVIDTTL == 0 {
		cfg.DefaultJWTSVIDTTL = DefaultJWTSVIDTTL
	}
	if cfg.DownstreamCATTL == 0 {
		cfg.DownstreamCATTL = DefaultDownstreamCATTL
	}
	if cfg.MaxAttestations == 0 {
		cfg.MaxAttestations = DefaultMaxAttestations
	}
	if cfg.MaxAttestationsPerSource == 0 {
		cfg.MaxAttestationsPerSource = DefaultMaxAttestationsPerSource
	}
	if cfg.MaxAttestations < 0 || cfg.MaxAttestationsPerSource < 0 {
		return nil, errors.New("nodeapi: attestation bounds must not be negative")
	}
	cfg.MaxAttestationsPerSource = min(cfg.MaxAttestationsPerSource, cfg.MaxAttestations)
	if cfg.DownstreamCATTL < time.Minute {
		return nil, fmt.Errorf("nodeapi: downstream CA TTL %s is too short (minimum 1m)", cfg.DownstreamCATTL)
	}
	if err := entry.CheckTTL(cfg.DefaultX509SVIDTTL); err != nil {
		return nil, fmt.Errorf("nodeapi: default X.509-SVID TTL: %w", err)
	}
	if err := entry.CheckTTL(cfg.DefaultJWTSVIDTTL); err != nil {
		return nil, fmt.Errorf("nodeapi: default JWT-SVID TTL: %w", err)
	}
	s := &Service{
		td:       cfg.TrustDomain,
		serverID: admin.ServerID(cfg.TrustDomain),
		store:    cfg.Store,
		km:       cfg.KeyManager,
		clock:    cfg.Clock,
		log:      cfg.Logger,
		metrics:  cfg.Metrics,
		x509TTL:  cfg.DefaultX509SVIDTTL,
		jwtTTL:   cfg.DefaultJWTSVIDTTL,

		downstreamTTL: cfg.DownstreamCATTL,
		attestLimit:   newAttestLimiter(cfg.MaxAttestations, cfg.MaxAttestationsPerSource),
		renewKick:     make(chan struct{}, 1),
		stopping:      make(chan struct{}),
		ready:         make(chan struct{}),
	}
	s.idx = newIndex(cfg.Store, cfg.TrustDomain, cfg.Clock, cfg.Logger)
	s.idx.parent = cfg.Parent
	s.idx.serverID = s.serverID
	s.idx.readBound = s.x509TTL
	s.attestors = map[string]NodeAttestor{AttestationTypeJoinToken: &joinTokenAttestor{store: cfg.Store, clock: cfg.Clock, metrics: cfg.Metrics}}
	for _, a := range cfg.NodeAttestors {
		if a == nil || a.Type() == "" {
			return nil, errors.New("nodeapi: node attestor without a type")
		}
		if _, dup := s.attestors[a.Type()]; dup {
			return nil, fmt.Errorf("nodeapi: node attestor %q given twice", a.Type())
		}
		s.attestors[a.Type()] = a
	}
	cfg.Metrics.ObserveNode(s.idx.stats)
	return s, nil
}

// Run loads the entry index, keeps it current from the store's change
// feed, and keeps the server's TLS certificate signed and renewed, until
// ctx ends. It returns after all its goroutines have stopped; open Sync
// streams end with Unavailable. Run may be called once.
func (s *Service) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("nodeapi: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		s.idx.run(ctx, func() {
			s.idxLoaded.Store(true)
			s.checkReady()
		}, s.kickRenewer)
	}()
	go func() {
		defer wg.Done()
		s.renewLoop(ctx)
	}()
	<-ctx.Done()
	close(s.stopping)
	wg.Wait()
	return nil
}

// Ready returns a channel that is closed once the service can serve: the
// entry index is loaded and the server has a TLS certificate. Until then
// every call is refused with Unavailable.
func (s *Service) Ready() <-chan struct{} { return s.ready }

func (s *Service) checkReady() {
	if s.idxLoaded.Load() && s.certIssued.Load() {
		s.readyOnce.Do(func() { close(s.ready) })
	}
}

func (s *Service) isReady() bool {
	select {
	case <-s.ready:
		return true
	default:
		return false
	}
}

// Register registers the node API on g. g must use the service's
// interceptors and TLS configuration: build it with ServerOptions.
func (s *Service) Register(g *grpc.Server) {
	nodev1.RegisterNodeServiceServer(g, &handler{s: s})
}

// handler implements nodev1.NodeServiceServer.
type handler struct {
	nodev1.UnimplementedNodeServiceServer
	s *Service
}

// defaultTTL returns ttl, or def if ttl is zero.
func defaultTTL(ttl, def time.Duration) time.Duration {
	if ttl == 0 {
		return def
	}
	return ttl
}
