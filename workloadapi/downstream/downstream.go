package downstream

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"writ.dev/writ/agent/svidcache"
	agentv1 "writ.dev/writ/ca/api/agent/v1"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/workloadapi"

	"writ.dev/writ/internal/logkey"
)

// ErrConfig: the Config is incomplete.
var ErrConfig = errors.New("downstream: invalid configuration")

// Limits on requests.
const (
	// maxCSR bounds a CSR, in bytes.
	maxCSR = 16 << 10
	// maxTTL bounds a preferred TTL, in seconds (the server cuts it
	// further).
	maxTTL = int64(entry.MaxTTL / time.Second)
)

// Socket is the Workload API socket the service is registered on:
// *workloadapi.Server.
type Socket interface {
	Attest(ctx context.Context) (*workloadapi.Caller, error)
	Stopping() <-chan struct{}
}

// Cache is what the service reads: the agent's *svidcache.Cache.
type Cache interface {
	Identities(selectors []entry.Selector) []svidcache.Identity
	Subscribe(selectors []entry.Selector) *svidcache.Subscription
	Bundle() *spiffebundle.Bundle
	TaintedX509Authorities() []string
}

// Forwarder sends downstream calls to the server: the agent's
// agent.Downstream. Errors keep the server's gRPC status where there is
// one.
type Forwarder interface {
	MintX509CA(ctx context.Context, entryID string, csr []byte, ttl time.Duration) (chain, authorities [][]byte, err error)
	PublishJWTAuthority(ctx context.Context, entryID, kid string, pub []byte, expires time.Time) (time.Time, []byte, error)
}

// Config configures a Handler.
type Config struct {
	Socket    Socket
	Cache     Cache
	Forwarder Forwarder
	// Logger receives the service's log; nil discards it.
	Logger *slog.Logger
}

// Handler serves DownstreamService.
type Handler struct {
	agentv1.UnimplementedDownstreamServiceServer
	socket Socket
	cache  Cache
	fwd    Forwarder
	log    *slog.Logger
}

// New returns a Handler for cfg.
func New(cfg Config) (*Handler, error) {
	if cfg.Socket == nil || cfg.Cache == nil || cfg.Forwarder == nil {
		return nil, fmt.Errorf("%w: socket, cache and forwarder are required", ErrConfig)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Handler{socket: cfg.Socket, cache: cfg.Cache, fwd: cfg.Forwarder, log: log}, nil
}

// Register registers the service on r (the Workload API server, before
// it runs).
func (h *Handler) Register(r grpc.ServiceRegistrar) {
	agentv1.RegisterDownstreamServiceServer(r, h)
}

// caller attests the caller and returns it with its downstream entry.
func (h *Handler) caller(ctx context.Context) (*workloadapi.Caller, svidcache.Identity, error) {
	c, err := h.socket.Attest(ctx)
	if err != nil {
		return nil, svidcache.Identity{}, err
	}
	id, ok := downstreamIdentity(h.cache.Identities(c.Selectors))
	if !ok {
		return nil, svidcache.Identity{}, c.Refused("caller matches no downstream entry")
	}
	return c, id, nil
}

func downstreamIdentity(ids []svidcache.Identity) (svidcache.Identity, bool) {
	for _, id := range ids {
		if id.Downstream {
			return id, true
		}
	}
	return svidcache.Identity{}, false
}

// forwardErr is what the caller sees of a failed forward: the server's
// status code and message, or Unavailable.
func (h *Handler) forwardErr(op string, id svidcache.Identity, err error) error {
	if errors.Is(err, context.Canceled) {
		return status.Error(codes.Canceled, "canceled")
	}
	code, msg := codes.Unavailable, "the server cannot be reached"
	if st, ok := status.FromError(err); ok {
		switch st.Code() {
		case codes.InvalidArgument, codes.PermissionDenied, codes.FailedPrecondition, codes.AlreadyExists:
			code, msg = st.Code(), st.Message()
		}
	}
	h.log.Warn("downstream call failed", "op", op, logkey.EntryID, id.EntryID, logkey.Error, err.Error())
	return status.Error(code, msg)
}

// MintX509CA forwards the caller's CSR to the server.
func (h *Handler) MintX509CA(ctx context.Context, req *agentv1.MintX509CARequest) (*agentv1.MintX509CAResponse, error) {
	c, id, err := h.caller(ctx)
	if err != nil {
		return nil, err
	}
	switch {
	case len(req.GetCsr()) == 0 || len(req.GetCsr()) > maxCSR:
		return nil, status.Errorf(codes.InvalidArgument, "CSR must be 1 to %d bytes", maxCSR)
	case req.GetPreferredTtl() < 0 || req.GetPreferredTtl() > maxTTL:
		return nil, status.Errorf(codes.InvalidArgument, "preferred TTL must be 0 to %d seconds", maxTTL)
	}
	chain, roots, err := h.fwd.MintX509CA(ctx, id.EntryID, req.GetCsr(), time.Duration(req.GetPreferredTtl())*time.Second)
	if err != nil {
		return nil, h.forwardErr("mint X.509 CA", id, err)
	}
	if err := c.Check(); err != nil {
		return nil, err
	}
	h.log.Info("downstream CA issued", logkey.EntryID, id.EntryID, logkey.SPIFFEID, id.ID.String())
	return &agentv1.MintX509CAResponse{CaChain: chain, X509Authorities: roots}, nil
}

// PublishJWTAuthority forwards the caller's JWT key to the server.
func (h *Handler) PublishJWTAuthority(ctx context.Context, req *agentv1.PublishJWTAuthorityRequest) (*agentv1.PublishJWTAuthorityResponse, error) {
	c, id, err := h.caller(ctx)
	if err != nil {
		return nil, err
	}
	a := req.GetAuthority()
	if a == nil || a.GetKeyId() == "" || len(a.GetPublicKey()) == 0 || len(a.GetPublicKey()) > maxCSR || a.GetExpiresAt() <= 0 {
		return nil, status.Error(codes.InvalidArgument, "authority needs a key ID, a public key and an expiry")
	}
	exp, raw, err := h.fwd.PublishJWTAuthority(ctx, id.EntryID, a.GetKeyId(), a.GetPublicKey(), time.Unix(a.GetExpiresAt(), 0))
	if err != nil {
		return nil, h.forwardErr("publish JWT authority", id, err)
	}
	b, err := spiffebundle.Parse(id.ID.TrustDomain(), raw)
	if err != nil {
		return nil, h.forwardErr("publish JWT authority", id, fmt.Errorf("bundle from the server: %w", err))
	}
	if err := c.Check(); err != nil {
		return nil, err
	}
	resp := &agentv1.PublishJWTAuthorityResponse{ExpiresAt: exp.Unix()}
	for kid, k := range b.JWTAuthorities() {
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			continue
		}
		resp.JwtAuthorities = append(resp.JwtAuthorities, &agentv1.JWTAuthority{KeyId: kid, PublicKey: der})
	}
	h.log.Info("downstream JWT key published", logkey.EntryID, id.EntryID, logkey.KeyID, a.GetKeyId())
	return resp, nil
}

// WatchBundle streams the local trust domain's bundle.
func (h *Handler) WatchBundle(_ *agentv1.WatchBundleRequest, stream grpc.ServerStreamingServer[agentv1.WatchBundleResponse]) error {
	ctx := stream.Context()
	c, _, err := h.caller(ctx)
	if err != nil {
		return err
	}
	sub := h.cache.Subscribe(c.Selectors)
	defer sub.Close()
	var (
		sent        *spiffebundle.Bundle
		sentTainted []string
	)
	for {
		if _, ok := downstreamIdentity(h.cache.Identities(c.Selectors)); !ok {
			return c.Refused("caller no longer matches a downstream entry")
		}
		b, tainted := h.cache.Bundle(), h.cache.TaintedX509Authorities()
		if b != nil && (sent == nil || !sent.Equal(b) || !slices.Equal(sentTainted, tainted)) {
			raw, err := b.Marshal()
			if err != nil {
				return status.Error(codes.Internal, "cannot encode the bundle")
			}
			if err := c.Check(); err != nil {
				return err
			}
			if err := stream.Send(&agentv1.WatchBundleResponse{Bundle: raw, TaintedX509AuthorityIds: tainted}); err != nil {
				return err
			}
			sent, sentTainted = b, tainted
		}
		select {
		case <-ctx.Done():
			return nil
		case <-h.socket.Stopping():
			return status.Error(codes.Unavailable, "agent is stopping")
		case <-sub.Changed():
		}
	}
}
