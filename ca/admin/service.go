package admin

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/federation"
	"writ.dev/writ/internal/metrics"
)

// Limits on what one call may ask for.
const (
	// MaxBatchCreate is the most entries one BatchCreateEntry may carry.
	MaxBatchCreate = 5000
	// ListEntriesPageSize is the number of entries in each message that
	// ListEntries streams (the last may have fewer).
	ListEntriesPageSize = 500
	// RecommendedMaxRecvMsgSize is the grpc.MaxRecvMsgSize to serve the
	// admin API with: a full batch of MaxBatchCreate entries of ordinary
	// size fits, an unbounded message does not. BatchCreateEntry returns
	// the entries it created, so clients should accept responses of this
	// size too (grpc.MaxCallRecvMsgSize).
	RecommendedMaxRecvMsgSize = 16 << 20
	// DefaultJoinTokenTTL is how long a join token lasts when neither the
	// request nor Config says.
	DefaultJoinTokenTTL = 10 * time.Minute
)

// ServerID returns the SPIFFE ID of the Writ server of trust domain td,
// spiffe://<td>/writ/server. No entry or join token may be given it. It
// returns the zero ID if td is zero.
func ServerID(td spiffeid.TrustDomain) spiffeid.ID {
	return entry.ServerID(td)
}

// Store is the part of datastore.Store the admin API uses.
type Store interface {
	CreateEntries(ctx context.Context, entries []*entry.Entry) ([]datastore.EntryResult, error)
	FetchEntry(ctx context.Context, id string) (*entry.Entry, error)
	ListEntries(ctx context.Context, f datastore.EntryFilter) ([]*entry.Entry, error)
	UpdateEntry(ctx context.Context, id string, fn func(*entry.Entry) error) (*entry.Entry, error)
	DeleteEntry(ctx context.Context, id string) (*entry.Entry, error)

	FetchAgent(ctx context.Context, id spiffeid.ID) (*datastore.Agent, error)
	ListAgents(ctx context.Context) ([]*datastore.Agent, error)
	UpdateAgent(ctx context.Context, id spiffeid.ID, fn func(*datastore.Agent) error) (*datastore.Agent, error)
	DeleteAgent(ctx context.Context, id spiffeid.ID) (*datastore.Agent, error)

	CreateJoinToken(ctx context.Context, t *datastore.JoinToken) error

	FetchBundle(ctx context.Context, td spiffeid.TrustDomain) (*spiffebundle.Bundle, error)
	ListBundles(ctx context.Context) ([]*spiffebundle.Bundle, error)
	UpdateBundle(ctx context.Context, td spiffeid.TrustDomain, fn func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error)) (*spiffebundle.Bundle, error)
	DeleteBundle(ctx context.Context, td spiffeid.TrustDomain) error

	ListServers(ctx context.Context) ([]*datastore.Server, error)

	PutFederation(ctx context.Context, r *datastore.Federation) error
	ListFederations(ctx context.Context) ([]*datastore.Federation, error)
	DeleteFederation(ctx context.Context, td spiffeid.TrustDomain) error
}

// Config configures a Service.
type Config struct {
	// TrustDomain is the server's trust domain; every ID the API accepts
	// must be in it. Required.
	TrustDomain spiffeid.TrustDomain
	// Store holds the server's state. Required.
	Store Store
	// Clock stamps creation, update and expiry times. Defaults to the
	// system clock.
	Clock clock.Clock
	// Logger receives the audit log and the detail of internal errors.
	// Required: the audit log must not be lost for want of one.
	Logger *slog.Logger
	// DefaultJoinTokenTTL is the lifetime of join tokens whose request
	// gives none. Defaults to DefaultJoinTokenTTL; must be a whole number
	// of seconds from entry.MinTTL to entry.MaxTTL.
	DefaultJoinTokenTTL time.Duration
	// AllowedUIDs may call the admin API, besides root and the uid the
	// server runs as.
	AllowedUIDs []uint32
	// CA is the server's key manager; without it CAService answers
	// Unavailable.
	CA CAManager
	// BundlePusher, if set, lets Rotate wait until agents were sent the
	// new bundle.
	BundlePusher BundlePusher
	// DefaultX509SVIDTTL is the lifetime of X.509-SVIDs whose entry sets
	// none; with the entries' TTLs it bounds how long after a CA key
	// stopped signing its X.509-SVIDs may be valid. Defaults to an hour.
	DefaultX509SVIDTTL time.Duration
	// Federation, if set, fetches federated bundles; RefreshFederation
	// and the status in FederationService's answers come from it.
	Federation FederationFetcher
	// Backup, if set, writes a backup of the server for ServerService's
	// Backup; without it Backup answers FailedPrecondition.
	Backup Backuper
	// TemplateReports, if set, tells ListTemplateIssued what agents
	// report their template entries issue.
	TemplateReports TemplateReports
	// Metrics counts the calls by method and code. Nil records none.
	Metrics *metrics.Server
	// Trust, if set, verifies the client X.509-SVIDs of the remote admin
	// listener (RemoteServerOptions); AdminIDs are the SPIFFE IDs, in
	// TrustDomain, that may call the admin API there besides those of
	// entries with Admin set.
	Trust    TrustSource
	AdminIDs []spiffeid.ID
	// OAuthTokenTTL is the longest lifetime of the OAuth access tokens
	// this server issues: RevokeOAuthTokens keeps a revocation at least
	// that long, and never less than entry.MaxTTL (the longest JWT-SVID
	// and the cap of every server's token TTL). Defaults to
	// DefaultOAuthTokenTTL.
	OAuthTokenTTL time.Duration
}

// Backuper writes a backup archive of the server to w. It fails with
// ErrBackupUnsupported when the server's state cannot be backed up this
// way (a shared database).
type Backuper interface {
	WriteBackup(ctx context.Context, w io.Writer) error
}

// ErrBackupUnsupported means the server cannot write a backup of its
// state itself; its message says what to do instead.
var ErrBackupUnsupported = errors.New("backup not supported")

// Service serves the admin API: entries, agents, join tokens and the
// bundle. Its interceptors must be installed on the server it is
// registered with; without them every admin call is refused.
type Service struct {
	td           spiffeid.TrustDomain
	store        Store
	clock        clock.Clock
	log          *slog.Logger
	joinTokenTTL time.Duration
	ca           CAManager
	pusher       BundlePusher
	reports      TemplateReports
	x509SVIDTTL  time.Duration
	metrics      *metrics.Server
	// oauthTokenTTL is the longest OAuth access token lifetime.
	oauthTokenTTL time.Duration
	// allowed is the set of uids that may call admin methods. It is only
	// read once the service serves.
	allowed map[uint32]bool
	// self is the uid the server runs as.
	self       uint32
	backup     Backuper
	federation FederationFetcher
	// trust and adminIDs authorize remote callers (remote.go).
	trust    TrustSource
	adminIDs map[spiffeid.ID]bool
}

// FederationFetcher is the server's federated bundle fetcher
// (federation.Fetcher).
type FederationFetcher interface {
	Refresh(ctx context.Context, r *datastore.Federation) error
	Status(td spiffeid.TrustDomain) (federation.Status, bool)
	Kick()
}

// New returns a Service for cfg.
func New(cfg Config) (*Service, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("admin: trust domain is required")
	}
	if cfg.Store == nil {
		return nil, errors.New("admin: store is required")
	}
	if cfg.Logger == nil {
		return nil, errors.New("admin: logger is required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.DefaultJoinTokenTTL == 0 {
		cfg.DefaultJoinTokenTTL = DefaultJoinTokenTTL
	}
	if err := entry.CheckTTL(cfg.DefaultJoinTokenTTL); err != nil {
		return nil, fmt.Errorf("admin: default join token TTL: %w", err)
	}
	allowed, err := allowedUIDs(uint32(os.Getuid()), cfg.AllowedUIDs)
	if err != nil {
		return nil, err
	}
	adminIDs, err := checkRemoteConfig(&cfg)
	if err != nil {
		return nil, err
	}
	return &Service{
		td:            cfg.TrustDomain,
		store:         cfg.Store,
		clock:         cfg.Clock,
		log:           cfg.Logger,
		joinTokenTTL:  cfg.DefaultJoinTokenTTL,
		ca:            cfg.CA,
		pusher:        cfg.BundlePusher,
		reports:       cfg.TemplateReports,
		x509SVIDTTL:   cmp.Or(cfg.DefaultX509SVIDTTL, time.Hour),
		allowed:       allowed,
		self:          uint32(os.Getuid()),
		backup:        cfg.Backup,
		federation:    cfg.Federation,
		metrics:       cfg.Metrics,
		trust:         cfg.Trust,
		adminIDs:      adminIDs,
		oauthTokenTTL: cmp.Or(cfg.OAuthTokenTTL, DefaultOAuthTokenTTL),
	}, nil
}

// overflowUID is the uid the kernel reports for a peer whose uid has no
// mapping in the server's user namespace (/proc/sys/kernel/overflowuid,
// 65534 unless changed), which is also "nobody" on most systems.
const overflowUID = 65534

// allowedUIDs returns the set of uids that may call admin methods: root,
// the server's own uid and extra.
func allowedUIDs(self uint32, extra []uint32) (map[uint32]bool, error) {
	allowed := map[uint32]bool{0: true, self: true}
	for _, uid := range extra {
		// Allowing either would admit callers the kernel could not name:
		// unmapped users of other user namespaces, or (uid_t)-1.
		if uid == overflowUID || uid == math.MaxUint32 {
			return nil, fmt.Errorf("admin: uid %d may not be allowed: the kernel reports it for unmapped users", uid)
		}
		allowed[uid] = true
	}
	return allowed, nil
}

// Register registers the admin services on g. Install the service's
// UnaryInterceptor and StreamInterceptor on g as well.
func (s *Service) Register(g *grpc.Server) {
	adminv1.RegisterEntryServiceServer(g, &entryService{s: s})
	adminv1.RegisterAgentServiceServer(g, &agentService{s: s})
	adminv1.RegisterJoinTokenServiceServer(g, &joinTokenService{s: s})
	adminv1.RegisterBundleServiceServer(g, &bundleService{s: s})
	adminv1.RegisterServerServiceServer(g, &serverService{s: s})
	adminv1.RegisterCAServiceServer(g, &caService{s: s})
	adminv1.RegisterFederationServiceServer(g, &federationService{s: s})
	adminv1.RegisterOAuthServiceServer(g, &oauthService{s: s})
}
