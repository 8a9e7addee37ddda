package sdsv3

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/workloadapi"
)

// Default resource names, as SPIRE's agent serves them.
const (
	// DefaultSVIDName names the caller's first X.509-SVID.
	DefaultSVIDName = "default"
	// DefaultBundleName names the local trust domain's bundle.
	DefaultBundleName = "ROOTCA"
	// DefaultAllBundlesName names every trust domain's bundle in one
	// SPIFFE validator configuration.
	DefaultAllBundlesName = "ALL"
)

// Socket is the Workload API socket the service is registered on:
// *workloadapi.Server.
type Socket interface {
	// Attest identifies the caller of a call on the socket.
	Attest(ctx context.Context) (*workloadapi.Caller, error)
	// Stopping is closed when the socket's server begins to stop.
	Stopping() <-chan struct{}
}

// Cache is what SDS reads: the agent's *svidcache.Cache.
type Cache interface {
	// Subscribe follows the X.509-SVIDs a selector set sees, and the
	// bundle.
	Subscribe(selectors []entry.Selector) *svidcache.Subscription
	// Identities returns the entries a selector set matches.
	Identities(selectors []entry.Selector) []svidcache.Identity
	// X509SVIDs returns the unexpired X.509-SVIDs a selector set sees.
	X509SVIDs(selectors []entry.Selector) []*svidcache.X509SVID
	// Bundle returns the local trust domain's bundle, nil before the
	// first one.
	Bundle() *spiffebundle.Bundle
	// FederatedBundles returns the bundles of the foreign trust domains
	// a selector set's entries federate with, ordered by trust domain.
	FederatedBundles(selectors []entry.Selector) []*spiffebundle.Bundle
}

// Config configures a Handler.
type Config struct {
	// Socket attests callers (required).
	Socket Socket
	// Cache supplies SVIDs and bundles (required).
	Cache Cache
	// DefaultSVIDName, DefaultBundleName and DefaultAllBundlesName are
	// the resource names of the caller's first SVID, of the local trust
	// domain's bundle and of every trust domain's bundles; empty means
	// the package's defaults ("default", "ROOTCA", "ALL"). The
	// all-bundles name may be the bundle name: it then serves every
	// bundle where the SPIFFE validator is used, the local one
	// elsewhere.
	DefaultSVIDName       string
	DefaultBundleName     string
	DefaultAllBundlesName string
	// DisableSPIFFECertValidation serves bundles as trusted_ca, not in
	// the SPIFFE validator form, and the all-bundles name is then not
	// served, except to an Envoy whose node metadata holds
	// disable_spiffe_cert_validation: false.
	DisableSPIFFECertValidation bool
	// Logger receives NACKs and, at debug level, the requests and
	// responses (names and versions only). Nil discards them.
	Logger *slog.Logger
}

// Errors.
var (
	// ErrConfig: the Config is incomplete.
	ErrConfig = errors.New("sdsv3: invalid configuration")

	errWrongType    = status.Error(codes.InvalidArgument, "only "+SecretTypeURL+" resources are served")
	errStopping     = status.Error(codes.Unavailable, "the agent is shutting down")
	errTooManyNames = status.Errorf(codes.InvalidArgument, "more than %d resource names", MaxResourceNames)
)

// Handler serves Envoy's SecretDiscoveryService. Register it on the
// Workload API server with Register.
type Handler struct {
	secretv3.UnimplementedSecretDiscoveryServiceServer

	socket            Socket
	cache             Cache
	log               *slog.Logger
	defaultSVID       string
	defaultBundle     string
	defaultAllBundles string
	disableValidator  bool
}

// New returns a Handler configured by cfg.
func New(cfg Config) (*Handler, error) {
	if cfg.Socket == nil || cfg.Cache == nil {
		return nil, ErrConfig
	}
	h := &Handler{
		socket:            cfg.Socket,
		cache:             cfg.Cache,
		log:               cfg.Logger,
		defaultSVID:       cmpOr(cfg.DefaultSVIDName, DefaultSVIDName),
		defaultBundle:     cmpOr(cfg.DefaultBundleName, DefaultBundleName),
		defaultAllBundles: cmpOr(cfg.DefaultAllBundlesName, DefaultAllBundlesName),
		disableValidator:  cfg.DisableSPIFFECertValidation,
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	return h, nil
}

func cmpOr(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// Register registers h on r (the Workload API server).
func (h *Handler) Register(r grpc.ServiceRegistrar) {
	secretv3.RegisterSecretDiscoveryServiceServer(r, h)
}

// Log attribute keys.
const (
	keyNames   = "resource_names"
	keyVersion = "version_info"
	keyNonce   = "nonce"
	keyMissing = "missing"
)

// StreamSecrets serves one xDS state-of-the-world stream of secrets.
func (h *Handler) StreamSecrets(stream grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	ctx := stream.Context()
	caller, err := h.socket.Attest(ctx)
	if err != nil {
		return err
	}
	if len(h.cache.Identities(caller.Selectors)) == 0 {
		return caller.Refused("SDS caller matches no entry")
	}
	sub := h.cache.Subscribe(caller.Selectors)
	defer sub.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reqs := make(chan *discoveryv3.DiscoveryRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()

	var (
		names      []string     // of the latest request
		subscribed bool         // a request has arrived
		named      bool         // a request has named secrets
		node       *corev3.Node // the latest the client sent
		version    uint64       // of the latest response
		lastNonce  string       // of the latest response; "" before the first
		lastRes    []*anypb.Any // of the latest response
		lastMiss   []string     // names left out of the latest response
	)
	for {
		force := false // answer even if the secrets did not change
		select {
		case req := <-reqs:
			if err := checkRequest(req); err != nil {
				return err
			}
			if req.GetNode() != nil {
				node = req.GetNode()
			}
			if lastNonce != "" {
				if req.GetResponseNonce() != lastNonce {
					// A reply to an older response: xDS says to ignore it.
					h.log.Debug("SDS request with a stale nonce ignored", keyNonce, req.GetResponseNonce())
					continue
				}
				if d := req.GetErrorDetail(); d != nil {
					// A NACK: the client keeps what it had. Sending the
					// same again would be rejected again; the next change
					// gets a new response.
					h.log.Warn("Envoy rejected the secrets sent", keyNames, lastSent(names), keyVersion, strconv.FormatUint(version, 10), "error", d.GetMessage())
				} else {
					h.log.Debug("SDS response acknowledged", keyNames, names, keyVersion, req.GetVersionInfo())
				}
				if sameNames(names, req.GetResourceNames()) {
					continue
				}
			}
			names = slices.Clone(req.GetResourceNames())
			subscribed, force = true, true
			named = named || len(names) > 0
		case <-sub.Changed():
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-h.socket.Stopping():
			return errStopping
		}
		if !subscribed {
			continue
		}
		state := sub.State()
		if len(state.X509SVIDs) == 0 && len(h.cache.Identities(caller.Selectors)) == 0 {
			return caller.Refused("SDS caller lost its last entry")
		}
		if len(names) == 0 && named {
			// xDS: a client that named secrets and now names none wants
			// none; only a first request without names asks for all.
			continue
		}
		res, missing, err := h.secrets(names, viewOf(state.X509SVIDs, state.Bundle, state.Federated), h.spiffeValidator(node))
		if err != nil {
			h.log.Error("cannot encode secrets", "err", err)
			return status.Error(codes.Internal, "cannot encode the secrets")
		}
		if !slices.Equal(missing, lastMiss) && len(missing) > 0 {
			h.log.Info("SDS caller asked for secrets it has none of (yet); they are sent when they exist", keyMissing, missing)
		}
		lastMiss = missing
		if !force && slices.EqualFunc(res, lastRes, func(a, b *anypb.Any) bool { return proto.Equal(a, b) }) {
			continue // what changed is not among the names asked for
		}
		if len(res) == 0 && lastNonce == "" {
			continue // nothing to send yet: Envoy waits for the secret
		}
		// Every response, whether a request or a change brought it, goes
		// only to the process that connected: one that exited, executed
		// another program or changed its uid since gets nothing more.
		if err := caller.Check(); err != nil {
			return err
		}
		version++
		resp := &discoveryv3.DiscoveryResponse{
			VersionInfo: strconv.FormatUint(version, 10),
			Resources:   res,
			TypeUrl:     SecretTypeURL,
			Nonce:       newNonce(),
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
		h.log.Debug("SDS response sent", keyNames, names, keyVersion, resp.VersionInfo, keyNonce, resp.Nonce, "resources", len(res))
		lastNonce, lastRes = resp.Nonce, res
	}
}

// FetchSecrets answers one request with the current secrets.
func (h *Handler) FetchSecrets(ctx context.Context, req *discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, error) {
	caller, err := h.socket.Attest(ctx)
	if err != nil {
		return nil, err
	}
	if len(h.cache.Identities(caller.Selectors)) == 0 {
		return nil, caller.Refused("SDS caller matches no entry")
	}
	if err := checkRequest(req); err != nil {
		return nil, err
	}
	svids := h.cache.X509SVIDs(caller.Selectors)
	res, missing, err := h.secrets(req.GetResourceNames(), viewOf(svids, h.cache.Bundle(), h.cache.FederatedBundles(caller.Selectors)), h.spiffeValidator(req.GetNode()))
	if err != nil {
		h.log.Error("cannot encode secrets", "err", err)
		return nil, status.Error(codes.Internal, "cannot encode the secrets")
	}
	if len(missing) > 0 {
		h.log.Debug("SDS caller asked for secrets it has none of", keyMissing, missing)
	}
	return &discoveryv3.DiscoveryResponse{Resources: res, TypeUrl: SecretTypeURL}, nil
}

// viewOf is the view of svids, the local bundle b (nil: none yet) and
// the foreign bundles fed. Foreign bundles without X.509 authorities
// validate nothing in TLS and are left out; they never come first, where
// the local one is.
func viewOf(svids []*svidcache.X509SVID, b *spiffebundle.Bundle, fed []*spiffebundle.Bundle) view {
	v := view{svids: svids}
	if b == nil {
		return v
	}
	v.bundles = []*spiffebundle.Bundle{b}
	for _, f := range fed {
		if f.TrustDomain() != b.TrustDomain() && len(f.X509Authorities()) > 0 {
			v.bundles = append(v.bundles, f)
		}
	}
	return v
}

// sameNames reports whether a and b hold the same names, in any order.
func sameNames(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// lastSent is names for a log line; empty means every secret.
func lastSent(names []string) []string {
	if len(names) == 0 {
		return []string{"(all)"}
	}
	return names
}

// newNonce returns a nonce unique to one response.
func newNonce() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}
