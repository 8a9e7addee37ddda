package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"writ.dev/writ/ca/admin"
	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/federation"
	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/ca/nodeapi"
	"writ.dev/writ/ca/ui"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/datadir"
	"writ.dev/writ/internal/metrics"
	"writ.dev/writ/internal/peercred"
	"writ.dev/writ/internal/probe"
	"writ.dev/writ/internal/taskgroup"
	"writ.dev/writ/internal/unixsock"

	"writ.dev/writ/internal/logkey"
)

// Names inside the data directory.
const (
	DatastoreFile = "datastore.db"
	KeysDir       = "keys"
	AdminSocket   = "admin.sock"
)

// Defaults for Config fields left zero.
const (
	DefaultCATTL        = 24 * time.Hour
	DefaultX509SVIDTTL  = time.Hour
	DefaultJWTSVIDTTL   = 5 * time.Minute
	DefaultJoinTokenTTL = 10 * time.Minute
	DefaultKeyType      = "ec-p256"
	DefaultBindAddress  = "127.0.0.1:8081"

	DefaultBundleRefreshHint = keymanager.DefaultRefreshHint
)

// Config configures a Server.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	DataDir     string
	// BindAddress is the TLS endpoint agents use.
	BindAddress string
	// AdminSocket defaults to admin.sock in DataDir.
	AdminSocket string
	CATTL       time.Duration
	// BundleRefreshHint is the refresh hint published in the bundle
	// (spiffe_refresh_hint), after which federated trust domains fetch it
	// again. Defaults to keymanager.DefaultRefreshHint.
	BundleRefreshHint  time.Duration
	DefaultX509SVIDTTL time.Duration
	DefaultJWTSVIDTTL  time.Duration
	CAKeyType          string
	// AdminUIDs may call the admin API besides root and the server's uid.
	AdminUIDs []uint32
	Logger    *slog.Logger
	Clock     clock.Clock

	// AdminBindAddress, if set, is the host:port where the admin API is
	// also served over mutual TLS to callers with an admin X.509-SVID:
	// one listed in AdminIDs or of an entry with Admin set.
	AdminBindAddress string
	AdminIDs         []spiffeid.ID

	// Datastore names the datastore (see ParseDatastore): empty or "bolt"
	// for the bbolt file in DataDir, or a postgres:// URL, which
	// OpenPostgres opens with DatastorePassword.
	Datastore         string
	DatastorePassword string
	// OpenPostgres opens a PostgreSQL datastore. Without it a postgres://
	// Datastore is refused with ErrDatastoreUnavailable.
	OpenPostgres func(ctx context.Context, connString, password string) (datastore.Store, error)
	// Keys chooses where CA keys live and who signs the CA (keys.go).
	Keys KeysConfig
	// UIAddress, if set, is the host:port of the read-only status page
	// (package ui); UIToken is the token its requests must carry.
	UIAddress string
	UIToken   string
	// JWTIssuer, if set, is the iss claim of JWT-SVIDs and the issuer
	// that OIDC discovery publishes: an absolute http(s) URL.
	JWTIssuer string
	// Federation configures the SPIFFE bundle endpoint, OIDC the OIDC
	// discovery endpoint; each is off without a BindAddress.
	Federation FederationConfig
	OIDC       OIDCConfig
	// OAuth configures the OAuth 2.0 authorization server (package
	// oauth); off without a BindAddress.
	OAuth OAuthConfig
	// NodeAttestors are the node attestation methods enabled besides
	// join tokens (built in cmd/ from configuration).
	NodeAttestors []nodeapi.NodeAttestor

	// Metrics receives the server's metrics; nil records none.
	Metrics *metrics.Server
	// MetricsAddress, if set, is where MetricsHandler is served at
	// /metrics over HTTP (a bare port means loopback).
	MetricsAddress string
	MetricsHandler http.Handler
	// HealthAddress, if set, is where /live and /ready are served over
	// HTTP. It may equal MetricsAddress.
	HealthAddress string
}

// FederationConfig configures the SPIFFE bundle endpoint that other trust
// domains fetch this trust domain's bundle from.
type FederationConfig struct {
	BindAddress string
	// Profile is ProfileHTTPSSPIFFE (the default: the server's own
	// X.509-SVID authenticates it; EndpointID, if set, must be its ID) or
	// ProfileHTTPSWeb (CertFile and KeyFile, reloaded when they change).
	Profile    string
	EndpointID spiffeid.ID
	CertFile   string
	KeyFile    string
}

// OIDCConfig configures OIDC discovery and the JWKS.
type OIDCConfig struct {
	BindAddress string
	// CertFile and KeyFile serve HTTPS (reloaded when they change);
	// InsecureHTTP serves plain HTTP instead, for a TLS-terminating proxy
	// or CDN in front.
	CertFile     string
	KeyFile      string
	InsecureHTTP bool
}

// OAuthConfig configures the OAuth 2.0 authorization server.
type OAuthConfig struct {
	BindAddress string
	// Issuer is the issuer URL (an https origin) that clients reach the
	// endpoints at; by default https://BindAddress (with the port bound
	// if BindAddress has port 0).
	Issuer string
	// CertFile and KeyFile, if set, are the HTTPS certificate (reloaded
	// when they change); by default the server's own X.509-SVID serves.
	CertFile string
	KeyFile  string
	// TokenTTL is the longest lifetime of an access token
	// (oauth.DefaultTokenTTL if zero).
	TokenTTL time.Duration
}

// Server is a CA server.
type Server struct {
	cfg Config

	mu      sync.Mutex // guards running
	running bool
}

// New checks cfg and fills in defaults. It does no I/O.
func New(cfg Config) (*Server, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("trust domain is required")
	}
	if cfg.DataDir == "" {
		return nil, errors.New("data directory is required")
	}
	if cfg.BindAddress == "" {
		cfg.BindAddress = DefaultBindAddress
	}
	if cfg.AdminSocket == "" {
		cfg.AdminSocket = filepath.Join(cfg.DataDir, AdminSocket)
	}
	if cfg.CATTL == 0 {
		cfg.CATTL = DefaultCATTL
	}
	if cfg.DefaultX509SVIDTTL == 0 {
		cfg.DefaultX509SVIDTTL = DefaultX509SVIDTTL
	}
	if cfg.DefaultJWTSVIDTTL == 0 {
		cfg.DefaultJWTSVIDTTL = DefaultJWTSVIDTTL
	}
	if cfg.CAKeyType == "" {
		cfg.CAKeyType = DefaultKeyType
	}
	if _, err := x509ca.ParseKeyType(cfg.CAKeyType); err != nil {
		return nil, err
	}
	if err := cfg.Keys.check(); err != nil {
		return nil, err
	}
	for name, ttl := range map[string]time.Duration{"default X.509-SVID TTL": cfg.DefaultX509SVIDTTL, "default JWT-SVID TTL": cfg.DefaultJWTSVIDTTL} {
		if err := entry.CheckTTL(ttl); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	if cfg.BundleRefreshHint < 0 || cfg.BundleRefreshHint > 0 && cfg.BundleRefreshHint < time.Second {
		return nil, fmt.Errorf("bundle refresh hint %s: at least 1s", cfg.BundleRefreshHint)
	}
	if cfg.CATTL < 2*cfg.DefaultX509SVIDTTL {
		return nil, fmt.Errorf("CA TTL %s must be at least twice the default X.509-SVID TTL %s", cfg.CATTL, cfg.DefaultX509SVIDTTL)
	}
	if len(cfg.AdminSocket) > 100 {
		return nil, fmt.Errorf("admin socket path %s is too long for a Unix socket (%d bytes, at most 100)", cfg.AdminSocket, len(cfg.AdminSocket))
	}
	for _, id := range cfg.AdminIDs {
		if id.TrustDomain() != cfg.TrustDomain {
			return nil, fmt.Errorf("admin SPIFFE ID %s is not in trust domain %s", id, cfg.TrustDomain.Name())
		}
		if id == entry.ServerID(cfg.TrustDomain) {
			return nil, fmt.Errorf("admin SPIFFE ID %s is the servers' own ID", id)
		}
	}
	if len(cfg.AdminIDs) > 0 && cfg.AdminBindAddress == "" {
		return nil, errors.New("admin SPIFFE IDs need the remote admin bind address")
	}
	if _, err := ParseDatastore(cfg.Datastore); err != nil {
		return nil, err
	}
	if err := cfg.checkPublishing(); err != nil {
		return nil, err
	}
	if cfg.UIAddress != "" && len(cfg.UIToken) < ui.MinTokenLength {
		return nil, fmt.Errorf("status page token must be at least %d characters", ui.MinTokenLength)
	}
	for _, a := range []string{cfg.MetricsAddress, cfg.HealthAddress} {
		if a == "" {
			continue
		}
		if _, err := probe.ResolveAddress(a); err != nil {
			return nil, err
		}
	}
	if cfg.MetricsAddress != "" && cfg.MetricsHandler == nil {
		return nil, errors.New("a metrics address needs a metrics handler")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	return &Server{cfg: cfg}, nil
}

// Run serves until ctx ends, then shuts down cleanly and returns. It
// returns an error at once if the server cannot start.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return errors.New("server already running")
	}
	s.running = true
	s.mu.Unlock()
	log := s.cfg.Logger
	var audit *ui.AuditLog
	if s.cfg.UIAddress != "" {
		// The status page shows the recent audit records.
		audit = ui.NewAuditLog(recentAuditEvents)
		log = slog.New(audit.Handler(log.Handler(), logkey.Audit))
	}

	dir, err := datadir.Open(s.cfg.DataDir)
	if err != nil {
		return err
	}
	defer dir.Close()
	store, err := s.openStore(ctx, dir)
	if err != nil {
		return err
	}
	defer store.Close()
	store = measureStore(store, s.cfg.Metrics, s.cfg.Clock)

	km, closeKeys, followParent, parentTaint, err := newKeyManager(ctx, dir, s.cfg, store)
	if err != nil {
		return err
	}
	defer closeKeys()

	nodeSvc, err := nodeapi.New(nodeapi.Config{
		TrustDomain:        s.cfg.TrustDomain,
		Store:              store,
		KeyManager:         km,
		Clock:              s.cfg.Clock,
		Logger:             log,
		DefaultX509SVIDTTL: s.cfg.DefaultX509SVIDTTL,
		DefaultJWTSVIDTTL:  s.cfg.DefaultJWTSVIDTTL,
		NodeAttestors:      s.cfg.NodeAttestors,
		Metrics:            s.cfg.Metrics,
		Parent:             parentTaint,
	})
	if err != nil {
		return err
	}
	observeCAKeys(s.cfg.Metrics, km)
	nodeLis, err := net.Listen("tcp", s.cfg.BindAddress)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.cfg.BindAddress, err)
	}
	defer nodeLis.Close()
	serverID, err := LoadOrCreateServerID(dir.Path())
	if err != nil {
		return err
	}
	reg := newRegistry(store, s.cfg.Clock, log, serverID, advertisedAddress(s.cfg.BindAddress, nodeLis.Addr()))
	if err := reg.register(ctx); err != nil {
		return fmt.Errorf("register server %s in the datastore: %w", serverID, err)
	}
	nodeGRPC := grpc.NewServer(nodeSvc.ServerOptions()...)
	nodeSvc.Register(nodeGRPC)

	fetcher := federation.New(federation.Config{Store: store, Clock: s.cfg.Clock, Logger: log})
	adminSvc, err := admin.New(admin.Config{
		Federation:          fetcher,
		TrustDomain:         s.cfg.TrustDomain,
		Store:               store,
		Clock:               s.cfg.Clock,
		Logger:              log,
		DefaultJoinTokenTTL: DefaultJoinTokenTTL,
		AllowedUIDs:         s.cfg.AdminUIDs,
		CA:                  km,
		BundlePusher:        nodeSvc,
		TemplateReports:     nodeSvc,
		DefaultX509SVIDTTL:  s.cfg.DefaultX509SVIDTTL,
		Trust:               nodeSvc,
		AdminIDs:            s.cfg.AdminIDs,
		Backup:              &backuper{store: store, dir: dir, td: s.cfg.TrustDomain, serverID: serverID, keyManager: cmp.Or(s.cfg.Keys.KeyManager, KeyManagerDisk), clock: s.cfg.Clock},
		Metrics:             s.cfg.Metrics,
		OAuthTokenTTL:       s.cfg.OAuth.TokenTTL,
	})
	if err != nil {
		return err
	}
	adminLis, err := listenUnix(s.cfg.AdminSocket)
	if err != nil {
		return err
	}
	defer adminLis.Close()
	healthSrv := health.NewServer()
	healthSrv.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	adminGRPC := grpc.NewServer(
		grpc.Creds(peercred.TransportCredentials()),
		grpc.MaxRecvMsgSize(admin.RecommendedMaxRecvMsgSize),
		grpc.MaxSendMsgSize(admin.RecommendedMaxRecvMsgSize),
		grpc.ChainUnaryInterceptor(adminSvc.UnaryInterceptor()),
		grpc.ChainStreamInterceptor(adminSvc.StreamInterceptor()),
	)
	// registerAdmin registers every service of the admin API, on the
	// admin socket and on the remote admin listener alike. Services added
	// to the admin API are registered here, and nowhere else, so that
	// both listeners serve them (each method still needs its rule in
	// ca/admin's policy table).
	registerAdmin := func(g *grpc.Server) {
		adminSvc.Register(g)
		healthpb.RegisterHealthServer(g, healthSrv)
	}
	registerAdmin(adminGRPC)
	var remoteLis net.Listener
	var remoteGRPC *grpc.Server
	if s.cfg.AdminBindAddress != "" {
		if remoteLis, err = net.Listen("tcp", s.cfg.AdminBindAddress); err != nil {
			return fmt.Errorf("remote admin API: listen on %s: %w", s.cfg.AdminBindAddress, err)
		}
		defer remoteLis.Close()
		remoteGRPC = grpc.NewServer(adminSvc.RemoteServerOptions(nodeSvc.GetServerCertificate)...)
		registerAdmin(remoteGRPC)
	}

	endpoints, err := s.httpEndpoints(store, nodeSvc, km, audit, serverID)
	if err != nil {
		return err
	}
	for _, ep := range endpoints {
		defer ep.lis.Close()
	}
	probes, err := probe.ListenEndpoints(s.cfg.MetricsAddress, s.cfg.MetricsHandler, s.cfg.HealthAddress, s.readiness(store, km, nodeSvc))
	if err != nil {
		return err
	}
	g, gctx := taskgroup.New(ctx, log)
	for _, p := range probes {
		g.Serve(p.Name, p.Addr(), p.Serve, p.Stop)
	}
	g.Go("key manager", km.Run)
	if followParent != nil {
		g.Go("parent bundle", followParent)
	}
	g.Go("node API", nodeSvc.Run)
	g.Go("server registry", reg.run)
	g.Go("federation", fetcher.Run)
	g.Go("datastore pruning", (&pruner{store: store, clock: s.cfg.Clock, log: log}).run)
	select {
	case <-nodeSvc.Ready():
	case <-g.Done():
		return g.Wait()
	}
	// Sync streams end with gctx, so the graceful stops do not wait on
	// them.
	g.Serve("node API listener", nodeLis.Addr().String(), func() error { return nodeGRPC.Serve(nodeLis) }, func() { stopGracefully(nodeGRPC, 5*time.Second) })
	g.Serve("admin API", s.cfg.AdminSocket, func() error { return adminGRPC.Serve(adminLis) }, func() {
		healthSrv.Shutdown()
		stopGracefully(adminGRPC, 5*time.Second)
	})
	if remoteGRPC != nil {
		g.Serve("remote admin API", remoteLis.Addr().String(), func() error { return remoteGRPC.Serve(remoteLis) }, func() { stopGracefully(remoteGRPC, 5*time.Second) })
	}
	readyAttrs := []any{logkey.TrustDomain, s.cfg.TrustDomain.Name(), "server_id", serverID, "datastore", RedactDatastore(s.cfg.Datastore), "data_dir", dir.Path(), "admin_socket", s.cfg.AdminSocket, "bind_address", nodeLis.Addr().String()}
	if remoteLis != nil {
		readyAttrs = append(readyAttrs, "admin_address", remoteLis.Addr().String())
	}
	for _, ep := range endpoints {
		for _, t := range ep.tasks {
			g.Go(t.name, t.run)
		}
		g.Serve(ep.name, ep.lis.Addr().String(), ep.serve, ep.shutdown)
		readyAttrs = append(readyAttrs, ep.logKey, ep.lis.Addr().String())
	}
	healthSrv.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	log.Info("server ready", readyAttrs...)

	<-gctx.Done()
	log.Info("server stopping")
	runErr := g.Wait()
	_ = os.Remove(s.cfg.AdminSocket)
	log.Info("server stopped")
	return runErr
}

// checkState refuses a data directory whose datastore is missing while CA
// keys exist: that is lost state, not a first start.
func checkState(dir *datadir.Dir) error {
	_, err := os.Lstat(dir.Join(DatastoreFile))
	dbMissing := errors.Is(err, fs.ErrNotExist)
	if err != nil && !dbMissing {
		return err
	}
	if !dbMissing {
		return datadir.CheckFile(dir.Join(DatastoreFile))
	}
	keys, err := filepath.Glob(dir.Join(KeysDir, "*.pem"))
	if err != nil {
		return err
	}
	if len(keys) > 0 {
		return fmt.Errorf("%w: %s is missing but %s holds CA keys; restore the datastore from backup (starting over means a new CA that no agent trusts; to do that on purpose, empty the data directory)", keymanager.ErrInconsistent, dir.Join(DatastoreFile), dir.Join(KeysDir))
	}
	return nil
}

// listenUnix listens on the admin socket at path with internal/unixsock's
// rules: missing directories are created 0700, a stale socket is replaced
// but nothing else (and a symbolic link is never followed), and the
// directories above it must be safe from other users. The socket is mode
// 0666: who may call is decided per call from the peer's uid, and its
// reachability is governed by its directory.
func listenUnix(path string) (net.Listener, error) {
	l, err := unixsock.Listen(path, unixsock.Options{Mode: 0o666, DirMode: 0o700})
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	return l, nil
}

func stopGracefully(g *grpc.Server, timeout time.Duration) {
	done := make(chan struct{})
	go func() { g.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		g.Stop()
	}
}
