package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/agent/nodeclient"
	"writ.dev/writ/agent/revocation"
	"writ.dev/writ/agent/rotate"
	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/internal/datadir"
	"writ.dev/writ/internal/unixsock"

	"writ.dev/writ/internal/logkey"
	"writ.dev/writ/internal/metrics"
	"writ.dev/writ/internal/probe"
	"writ.dev/writ/internal/taskgroup"
)

// Defaults and limits.
const (
	DefaultServerAddress = "127.0.0.1:8081"
	// MaxBatch is the most X.509-SVIDs asked for in one call.
	MaxBatch = 500
	// ReconnectSpread bounds the random delay before reconnecting after
	// an established connection broke, so that agents that lost the
	// server together do not all come back at the same instant.
	ReconnectSpread = time.Second
	// stableSession is how long a connection must have lasted for its
	// loss to reset the reconnection backoff.
	stableSession = time.Minute
	// firstSyncTimeout bounds the wait for the first Sync message.
	firstSyncTimeout = 30 * time.Second
)

// ReconnectBackoff spaces connection attempts after failures.
var ReconnectBackoff = rotate.Backoff{Base: 100 * time.Millisecond, Max: 30 * time.Second}

// Errors callers branch on.
var (
	// ErrNoIdentity: the agent has no agent SVID and no join token.
	ErrNoIdentity = errors.New("agent: no agent SVID")
	// ErrAgentSVIDExpired: the agent SVID expired; only a new join token
	// brings the agent back.
	ErrAgentSVIDExpired = errors.New("agent: agent SVID expired")
	// ErrNoTrustBundle: attestation needs --trust-bundle or
	// --insecure-bootstrap.
	ErrNoTrustBundle = errors.New("agent: no trust bundle to authenticate the server with")
	// ErrInconsistentState: the data directory holds partial or mismatched
	// state.
	ErrInconsistentState = errors.New("agent: inconsistent data directory")
	// ErrConfig: an invalid Config.
	ErrConfig = errors.New("agent: invalid configuration")
)

// Config configures an Agent.
type Config struct {
	// ServerAddress is the CA server's node API, host:port. With
	// ServerAddresses, it is one more server, first in the list.
	ServerAddress string
	// ServerAddresses are the node APIs of several servers sharing one
	// datastore, host:port each. The agent holds one connection, to one
	// of them, and fails over to the next when it is lost; a host name
	// counts as every address it resolves to. If neither ServerAddress
	// nor ServerAddresses is set, DefaultServerAddress is used.
	ServerAddresses []string
	// Resolver looks up the servers' host names (net.DefaultResolver if
	// nil).
	Resolver Resolver
	// TrustDomain is the trust domain of the server and of every SVID.
	TrustDomain spiffeid.TrustDomain
	// DataDir holds the agent's SVID, key and bundle (created 0700).
	DataDir string
	// SocketPath is the Workload API socket (default workload.sock in
	// DataDir). It is stored for the Workload API; the agent does not
	// listen on it.
	SocketPath string
	// JoinToken attests the agent when it has no valid saved SVID; it is
	// ignored otherwise.
	JoinToken string
	// NodeAttestor attests the agent when it has no valid saved SVID,
	// and again when the server no longer recognizes it. It excludes
	// JoinToken.
	NodeAttestor NodeAttestor
	// TrustBundlePath is a PEM file of the CA certificates that
	// authenticate the server at attestation.
	TrustBundlePath string
	// InsecureBootstrap attests without authenticating the server, and
	// trusts the bundle it returns from then on.
	InsecureBootstrap bool
	// MaxX509SVIDs bounds the X.509-SVIDs kept for entries no connected
	// workload matches (svidcache.DefaultMaxX509SVIDs if 0); others are
	// signed when a workload asks for them.
	MaxX509SVIDs int
	// NodeSelectors are the node's own selectors (from node attestation),
	// which fill the node.* fields of template entries.
	NodeSelectors []entry.Selector
	Clock         clock.Clock
	Logger        *slog.Logger

	// Metrics receives the agent's metrics; nil records none.
	Metrics *metrics.Agent
	// MetricsAddress, if set, is where MetricsHandler is served at
	// /metrics over HTTP (a bare port means loopback).
	MetricsAddress string
	MetricsHandler http.Handler
	// HealthAddress, if set, is where /live and /ready are served over
	// HTTP (see Readiness). It may equal MetricsAddress.
	HealthAddress string
}

// Agent is a node agent: it attests to the CA server, keeps the node's
// entries and their SVIDs in its cache, and renews everything on time.
type Agent struct {
	cfg         Config
	td          spiffeid.TrustDomain
	clk         clock.Clock
	log         *slog.Logger
	metrics     *metrics.Agent
	adminSocket string
	cache       *svidcache.Cache
	revocations *revocation.List
	sched       *scheduler
	ready       chan struct{}
	readyOnce   sync.Once
	running     atomic.Bool

	// The agent's identity and trust, read by TLS handshakes, the health
	// service and the JWT signer from other goroutines.
	svid    atomic.Pointer[agentSVID]
	cert    atomic.Pointer[tls.Certificate]
	bundle  atomic.Pointer[spiffebundle.Bundle]
	client  liveClient  // the connected session's client
	revoked atomic.Bool // the server refused the agent
	// steppedRenewal is the last agent SVID whose renewal brought an
	// SVID the agent refused (see renewDue).
	steppedRenewal atomic.Pointer[agentSVID]
	// nodeSelectors are the agent's node selectors as the server said.
	nodeSelectors atomic.Pointer[[]string]
	// taintGen counts the changes of the tainted authorities, so that an
	// SVID asked for before a taint and signed by a tainted CA is asked
	// for again at once (see signBatch).
	taintGen atomic.Uint64
	// taintRenewed is the agent SVID obtained by the last renewal made
	// because a tainted CA signed the previous one, if a tainted CA
	// signed it too, and taintRenewedGen the taintGen then: it is not
	// renewed for that reason again until the tainted set changes.
	taintRenewed    atomic.Pointer[agentSVID]
	taintRenewedGen atomic.Uint64

	// Owned by Run's goroutine.
	servers *serverPicker
	// connectedTo is the server of the last session that synced.
	connectedTo string
	dir         *datadir.Dir
	state       *stateStore
	joinToken   string // unused join token, for re-attestation
	synced      atomic.Bool
	lastErrMsg  string
}

// New checks cfg, fills in defaults and returns an agent. It does no
// I/O; Run does.
func New(cfg Config) (*Agent, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, fmt.Errorf("%w: trust domain is required", ErrConfig)
	}
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("%w: data directory is required", ErrConfig)
	}
	var servers []string
	for _, addr := range append([]string{cfg.ServerAddress}, cfg.ServerAddresses...) {
		if addr == "" || slices.Contains(servers, addr) {
			continue
		}
		if err := checkHostPort(addr); err != nil {
			return nil, fmt.Errorf("%w: server address %q: %v", ErrConfig, addr, err)
		}
		servers = append(servers, addr)
	}
	if len(servers) == 0 {
		servers = []string{DefaultServerAddress}
	}
	if cfg.MaxX509SVIDs < 0 {
		return nil, fmt.Errorf("%w: the X.509-SVID cache size must not be negative", ErrConfig)
	}
	cfg.ServerAddress, cfg.ServerAddresses = servers[0], servers
	if cfg.JoinToken != "" && cfg.NodeAttestor != nil {
		return nil, fmt.Errorf("%w: give a join token or a node attestor, not both", ErrConfig)
	}
	if cfg.TrustBundlePath != "" && cfg.InsecureBootstrap {
		return nil, fmt.Errorf("%w: give a trust bundle or insecure bootstrap, not both", ErrConfig)
	}
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("%w: data directory: %v", ErrConfig, err)
	}
	if cfg.SocketPath == "" {
		cfg.SocketPath = filepath.Join(dataDir, WorkloadSocketName)
	}
	if cfg.SocketPath, err = filepath.Abs(cfg.SocketPath); err != nil {
		return nil, fmt.Errorf("%w: socket path: %v", ErrConfig, err)
	}
	adminSocket := filepath.Join(dataDir, AdminSocketName)
	for _, p := range []string{cfg.SocketPath, adminSocket} {
		if err := unixsock.CheckPath(p); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrConfig, err)
		}
	}
	for _, addr := range []string{cfg.MetricsAddress, cfg.HealthAddress} {
		if addr == "" {
			continue
		}
		if _, err := probe.ResolveAddress(addr); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrConfig, err)
		}
	}
	if cfg.MetricsAddress != "" && cfg.MetricsHandler == nil {
		return nil, fmt.Errorf("%w: a metrics address needs a metrics handler", ErrConfig)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	a := &Agent{
		cfg:         cfg,
		td:          cfg.TrustDomain,
		clk:         cfg.Clock,
		log:         cfg.Logger,
		metrics:     cfg.Metrics,
		adminSocket: adminSocket,
		sched:       newScheduler(cfg.Clock),
		revocations: revocation.New(cfg.Clock),
		ready:       make(chan struct{}),
		servers:     newServerPicker(servers, cfg.Resolver, cfg.Logger),
	}
	jwtSigner, err := newJWTSigner(a)
	if err != nil {
		return nil, err
	}
	a.cache, err = svidcache.New(svidcache.Config{
		TrustDomain: cfg.TrustDomain,
		Clock:       cfg.Clock,
		Logger:      cfg.Logger,
		JWTSigner:   jwtSigner,

		MaxX509SVIDs: cfg.MaxX509SVIDs,
	})
	if err != nil {
		return nil, err
	}
	a.sched.keep, a.sched.unsigned = a.cache.Holds, a.cache.Unsigned
	a.cache.SetNodeSelectors(cfg.NodeSelectors)
	cfg.Metrics.ObserveCache(a.stats)
	return a, nil
}

// SetNodeSelectors replaces the node selectors that fill the node.*
// fields of template entries (after node attestation, for example). The
// IDs filled from the old ones stop being served at once; connected
// workloads get the new ones signed.
func (a *Agent) SetNodeSelectors(sel []entry.Selector) {
	a.sched.remove(a.cache.SetNodeSelectors(sel)...)
}

func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "" {
		return errors.New("no host")
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return errors.New("port must be a number from 1 to 65535")
	}
	return nil
}

// Cache returns the cache the Workload API reads.
func (a *Agent) Cache() *svidcache.Cache { return a.cache }

// Revocations returns the access-token revocations the server pushed,
// which the Workload API and the RevocationService read.
func (a *Agent) Revocations() *revocation.List { return a.revocations }

// SocketPath returns the Workload API socket path (absolute).
func (a *Agent) SocketPath() string { return a.cfg.SocketPath }

// AdminSocketPath returns the health service's socket path.
func (a *Agent) AdminSocketPath() string { return a.adminSocket }

// Ready is closed once the agent has applied its first full set of
// entries from the server and asked for their SVIDs.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

func (a *Agent) markReady() {
	a.readyOnce.Do(func() {
		st := a.cache.Stats()
		a.log.Info("agent ready", "entries", st.Entries, "x509_svids", st.X509SVIDs)
		close(a.ready)
	})
}

// Healthy reports whether the agent holds a valid agent SVID that the
// server has not refused.
func (a *Agent) Healthy() bool {
	s := a.svid.Load()
	return s != nil && !s.expired(a.clk.Now()) && !a.revoked.Load()
}

// ID returns the agent's SPIFFE ID (zero before attestation).
func (a *Agent) ID() spiffeid.ID {
	if s := a.svid.Load(); s != nil {
		return s.id
	}
	return spiffeid.ID{}
}

func (a *Agent) authorities() []*x509.Certificate {
	if b := a.bundle.Load(); b != nil {
		return b.X509Authorities()
	}
	return nil
}

func (a *Agent) setSVID(s *agentSVID) {
	a.svid.Store(s)
	a.cert.Store(s.cert)
}

// Run runs the agent until ctx ends: it loads or obtains the agent SVID,
// serves the health service, and keeps the cache in step with the server.
// It returns nil when ctx ends, and an error when it cannot start or when
// the agent SVID expires.
func (a *Agent) Run(ctx context.Context) error {
	if !a.running.CompareAndSwap(false, true) {
		return errors.New("agent: already running")
	}
	dir, err := datadir.Open(a.cfg.DataDir)
	if err != nil {
		return err
	}
	defer dir.Close()
	a.dir = dir
	a.state = newStateStore(dir)

	// The HTTP endpoints serve from the start, so that /live answers and
	// /ready says why not while the agent attests.
	probes, err := probe.ListenEndpoints(a.cfg.MetricsAddress, a.cfg.MetricsHandler, a.cfg.HealthAddress, a.Readiness)
	if err != nil {
		return err
	}
	g, ctx := taskgroup.New(ctx, a.log)
	for _, p := range probes {
		g.Serve(p.Name, p.Addr(), p.Serve, p.Stop)
	}
	stop := func(err error) error {
		g.Stop()
		if gerr := g.Wait(); gerr != nil && (err == nil || errors.Is(err, context.Canceled)) {
			err = gerr
		}
		return err
	}
	if err := a.start(ctx); err != nil {
		return stop(err)
	}
	health, err := a.serveHealth()
	if err != nil {
		return stop(err)
	}
	g.Go("SVID cache", a.cache.Run)
	g.Go("revocation list", a.revocations.Run)
	g.Go("renewal scheduler", func(ctx context.Context) error { a.sched.run(ctx); return nil })
	g.Go("signer", func(ctx context.Context) error { a.signWanted(ctx); return nil })
	g.Serve("agent health", a.adminSocket, health.serve, health.stop)
	a.log.Info("agent started", logkey.SPIFFEID, a.ID().String(), "server_addresses", a.cfg.ServerAddresses,
		"data_dir", dir.Path(), "admin_socket", a.adminSocket, "socket_path", a.cfg.SocketPath)

	err = stop(a.loop(ctx))
	a.log.Info("agent stopped")
	return err
}

// start sets the agent's SVID and bundle from the data dir, attesting
// with the join token when there is no valid SVID.
func (a *Agent) start(ctx context.Context) error {
	now := a.clk.Now()
	st, err := a.state.load(a.td, now)
	if err != nil {
		return err
	}
	if len(st.revocations) > 0 {
		a.revocations.Replace(st.revocations)
		a.log.Info("saved revocations loaded", "revocations", a.revocations.Len())
	}
	if len(st.federated) > 0 {
		// Served as soon as entries that federate with them arrive; the
		// server's first full set replaces them.
		a.cache.Apply(svidcache.Update{Federated: st.federated, FederatedFull: true})
	}
	if st.svid != nil {
		a.bundle.Store(st.bundle)
		a.setSVID(st.svid)
		if a.cfg.JoinToken != "" {
			a.log.Info("join token ignored: the agent has a valid saved agent SVID", logkey.SPIFFEID, st.svid.id.String(), "not_after", st.svid.notAfter)
			a.joinToken = a.cfg.JoinToken // kept in case the server refuses the saved SVID
		}
		return nil
	}
	if att := a.cfg.NodeAttestor; att != nil {
		if st.svidErr != nil {
			a.log.Info("attesting again with the node attestor", "attestation_type", att.Type(), "reason", st.svidErr.Error())
		}
		trust, insecure, err := a.bootstrapTrust(st.bundle)
		if err != nil {
			return err
		}
		return a.attestWithRetry(ctx, att, trust, insecure)
	}
	if a.cfg.JoinToken == "" {
		if st.svidErr != nil {
			return fmt.Errorf("%w; attest again: run the agent with --join-token and a new token (writ token generate)", st.svidErr)
		}
		return fmt.Errorf("%w in %s: run the agent with --join-token and a token from `writ token generate`, or with --node-attestor x509pop or sshpop", ErrNoIdentity, a.dir.Path())
	}
	if st.svidErr != nil {
		a.log.Info("attesting again with the join token", "reason", st.svidErr.Error())
	}
	trust, insecure, err := a.bootstrapTrust(st.bundle)
	if err != nil {
		return err
	}
	return a.attestWithRetry(ctx, joinTokenAttestor(a.cfg.JoinToken), trust, insecure)
}

// bootstrapTrust chooses what authenticates the server at attestation:
// --trust-bundle, else the saved bundle, else --insecure-bootstrap.
func (a *Agent) bootstrapTrust(saved *spiffebundle.Bundle) ([]*x509.Certificate, bool, error) {
	switch {
	case a.cfg.TrustBundlePath != "":
		certs, err := readTrustBundle(a.cfg.TrustBundlePath)
		return certs, false, err
	case saved != nil:
		return saved.X509Authorities(), false, nil
	case a.cfg.InsecureBootstrap:
		return nil, true, nil
	}
	return nil, false, fmt.Errorf("%w: give --trust-bundle with the CA certificates of trust domain %s (writ bundle show on the server), or --insecure-bootstrap to trust the first server reached", ErrNoTrustBundle, a.td.Name())
}

// attestWithRetry attests, retrying with backoff while the server is
// unreachable or too busy with other attestations (ResourceExhausted:
// servers bound the attestations in progress). It fails on anything
// else: a server that cannot be authenticated, a refused token, a
// malformed answer.
func (a *Agent) attestWithRetry(ctx context.Context, att NodeAttestor, trust []*x509.Certificate, insecure bool) error {
	for attempt := 0; ; attempt++ {
		addr := a.servers.pick(ctx)
		err := a.attest(ctx, addr, att, trust, insecure)
		busy := errors.Is(err, nodeclient.ErrBusy)
		if err == nil || (!busy && !errors.Is(err, nodeclient.ErrUnavailable)) {
			return err
		}
		// Every server once before backing off further.
		d := ReconnectBackoff.Delay(attempt/a.servers.size(), rand.Float64())
		msg := "attestation: server unavailable; retrying"
		if busy {
			msg = "attestation: server busy with other attestations; retrying"
		}
		a.log.Warn(msg, logkey.ServerAddress, addr, logkey.Error, err, "retry_in", d)
		if err := a.sleep(ctx, d); err != nil {
			return err
		}
	}
}

func (a *Agent) attest(ctx context.Context, addr string, att NodeAttestor, trust []*x509.Certificate, insecure bool) error {
	if insecure {
		a.log.Warn("insecure bootstrap: the server is NOT authenticated for this attestation; the " + att.Type() + " attestation goes to whichever server answers at " + addr + ", and the bundle it returns is trusted from now on")
	}
	c, err := nodeclient.New(nodeclient.Config{
		Address:           addr,
		TrustDomain:       a.td,
		Authorities:       func() []*x509.Certificate { return trust },
		InsecureBootstrap: insecure,
		Clock:             a.clk,
	})
	if err != nil {
		return err
	}
	defer c.Close()
	key, csr, err := newKeyAndCSR()
	if err != nil {
		return err
	}
	var res *nodeclient.AttestResult
	if token, ok := att.(joinTokenAttestor); ok {
		res, err = c.Attest(ctx, string(token), csr)
		if errors.Is(err, nodeclient.ErrPermissionDenied) {
			return fmt.Errorf("attestation refused: the join token is unknown, expired or already used; generate a new one (%w)", err)
		}
	} else {
		var payload []byte
		if payload, err = att.Payload(ctx); err != nil {
			return fmt.Errorf("attestation: %s: %w", att.Type(), err)
		}
		res, err = c.AttestNode(ctx, att.Type(), payload, csr, att.Respond)
		if errors.Is(err, nodeclient.ErrPermissionDenied) {
			return fmt.Errorf("%s attestation refused: %w", att.Type(), err)
		}
	}
	if err != nil {
		return fmt.Errorf("attestation: %w", err)
	}
	bundle, err := spiffebundle.Parse(a.td, res.Bundle)
	if err != nil {
		return fmt.Errorf("attestation: %w: bundle: %w", nodeclient.ErrProtocol, err)
	}
	if len(bundle.X509Authorities()) == 0 {
		return fmt.Errorf("attestation: %w: bundle has no X.509 authorities", nodeclient.ErrProtocol)
	}
	svid, err := newAgentSVID(a.td, res.Chain, key, bundle, a.clk.Now())
	if err == nil {
		svid.received(a.clk.Now())
	}
	if err != nil {
		return fmt.Errorf("attestation: %w: %w", nodeclient.ErrProtocol, err)
	}
	if err := a.state.save(svid, bundle); err != nil {
		return err
	}
	a.bundle.Store(bundle)
	a.setSVID(svid)
	a.revoked.Store(false)
	a.joinToken = ""
	a.setNodeSelectors(res.NodeSelectors)
	a.log.Info("agent attested", logkey.AttestationType, att.Type(), logkey.SPIFFEID, svid.id.String(), "not_after", svid.notAfter, logkey.ServerAddress, addr, "node_selectors", len(res.NodeSelectors))
	return nil
}

// sleep waits d on the agent's clock.
func (a *Agent) sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := a.clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C():
		return nil
	}
}

// loop connects, syncs and reconnects until ctx ends or the agent SVID
// expires.
func (a *Agent) loop(ctx context.Context) error {
	// Calls waiting for a session stop waiting when there will be none.
	defer a.client.end(nil, false)
	attempt := 0
	for {
		if s := a.svid.Load(); s.expired(a.clk.Now()) {
			a.client.end(nil, false) // no session before the agent attests again
		}
		if s := a.svid.Load(); s.expired(a.clk.Now()) && a.cfg.NodeAttestor != nil {
			a.log.Warn("agent SVID expired; attesting again with the node attestor", "attestation_type", a.cfg.NodeAttestor.Type(), "not_after", s.notAfter)
			if err := a.reattest(ctx); err != nil {
				a.log.Error("re-attestation failed", "error", err)
				if err := a.sleep(ctx, ReconnectBackoff.Delay(attempt, rand.Float64())); err != nil {
					return nil
				}
				attempt++
			}
			continue
		} else if s.expired(a.clk.Now()) {
			err := fmt.Errorf("%w at %s: the server can no longer recognize this agent; restart it with --join-token and a new token", ErrAgentSVIDExpired, s.notAfter.UTC().Format(time.RFC3339))
			a.log.Error("agent SVID expired", logkey.Error, err)
			return err
		}
		began := a.clk.Now()
		addr := a.servers.pick(ctx)
		healthy, err := a.session(ctx, addr)
		if ctx.Err() != nil {
			return nil
		}
		var wait time.Duration
		switch {
		case errors.Is(err, errRenewed):
			attempt = 0
			a.servers.again()
			continue // reconnect at once, to the same server, with the new certificate
		case errors.Is(err, nodeclient.ErrPermissionDenied):
			a.onRevoked(err)
			if a.cfg.NodeAttestor != nil {
				// The credential stays on the node: attest again (a banned
				// agent is refused). The backoff is not reset, so that two
				// nodes sharing a credential take turns slowly.
				a.log.Info("the server refused the agent SVID; attesting again with the node attestor", "attestation_type", a.cfg.NodeAttestor.Type())
				if rerr := a.reattest(ctx); rerr == nil {
					continue
				} else {
					a.log.Error("re-attestation failed", "error", rerr)
				}
			} else if a.joinToken != "" {
				tok := a.joinToken
				a.joinToken = ""
				a.log.Info("the server refused the saved agent SVID; attesting with the join token given")
				trust, insecure, terr := a.bootstrapTrust(a.bundle.Load())
				if terr == nil {
					terr = a.attestWithRetry(ctx, joinTokenAttestor(tok), trust, insecure)
				}
				if terr == nil {
					attempt = 0
					continue
				}
				a.log.Error("re-attestation failed", logkey.Error, terr)
			}
			wait = ReconnectBackoff.Delay(attempt, rand.Float64())
			attempt++
		case healthy:
			a.log.Warn("connection to the server lost; serving cached SVIDs until one is back", logkey.ServerAddress, addr, logkey.Error, err)
			// A random delay first, so that agents that lost a restarted
			// server together come back spread out (to the next server,
			// when there are several). Connections that keep breaking
			// soon after they start back off as failures.
			if a.clk.Now().Sub(began) >= stableSession {
				attempt = 0
			}
			wait = time.Duration(rand.Float64() * float64(ReconnectSpread))
			if attempt > 0 {
				wait = max(wait, ReconnectBackoff.Delay(attempt/a.servers.size(), rand.Float64()))
			}
			attempt++
		default:
			msg := addr + ": " + err.Error()
			if msg != a.lastErrMsg && errors.Is(err, nodeclient.ErrServerNotTrusted) {
				a.log.Error("the server's certificate does not verify against the trust bundle; not talking to it", logkey.ServerAddress, addr, logkey.Error, err, "attempt", attempt+1)
			} else if msg != a.lastErrMsg || attempt == 0 {
				a.log.Warn("cannot reach the server; retrying", logkey.ServerAddress, addr, logkey.Error, err, "attempt", attempt+1)
			} else {
				a.log.Debug("cannot reach the server; retrying", logkey.ServerAddress, addr, logkey.Error, err, "attempt", attempt+1)
			}
			a.lastErrMsg = msg
			// Every server once before backing off further.
			wait = ReconnectBackoff.Delay(attempt/a.servers.size(), rand.Float64())
			attempt++
		}
		if err := a.sleep(ctx, a.beforeExpiry(wait)); err != nil {
			return nil
		}
	}
}

// beforeExpiry bounds a reconnection wait so that, however far a long
// outage has backed off, the agent tries again before its SVID expires:
// at most a quarter of what is left of it (and at least the backoff's
// base), so that attempts come closer together in its last seconds. An
// agent the server refuses keeps its slow pace.
func (a *Agent) beforeExpiry(wait time.Duration) time.Duration {
	s := a.svid.Load()
	if s == nil || a.revoked.Load() {
		return wait
	}
	if left := s.notAfter.Sub(a.clk.Now()); left > 0 {
		return min(wait, max(left/4, ReconnectBackoff.Base))
	}
	return wait
}

// reattest attests again with the configured node attestor.
func (a *Agent) reattest(ctx context.Context) error {
	trust, insecure, err := a.bootstrapTrust(a.bundle.Load())
	if err != nil {
		return err
	}
	return a.attestWithRetry(ctx, a.cfg.NodeAttestor, trust, insecure)
}

// onRevoked handles the server refusing the agent (evicted, banned): the
// agent stops serving workload SVIDs at once, as the server stops
// honouring the agent, and reports unhealthy. It keeps trying, slowly, in
// case the agent is unbanned.
func (a *Agent) onRevoked(err error) {
	if a.revoked.Load() {
		a.log.Debug("server still refuses the agent", logkey.Error, err)
		return
	}
	// Drop first: once revoked reads true, nothing is served.
	a.cache.Apply(svidcache.Update{Full: true})
	a.sched.reset()
	a.revoked.Store(true)
	a.log.Error("the server refuses this agent (evicted or banned): dropped all workload SVIDs, stopped renewals; it needs to be unbanned, or attested again with a new join token", logkey.SPIFFEID, a.ID().String(), logkey.Error, err)
}
