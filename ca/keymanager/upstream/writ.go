package upstream

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	agentv1 "writ.dev/writ/ca/api/agent/v1"
	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/workloadapi"

	"writ.dev/writ/internal/logkey"
)

// Reconnection delays of Writ.Follow after the parent agent's stream
// fails: followRetry, doubling up to maxFollowRetry.
const (
	followRetry    = time.Second
	maxFollowRetry = time.Minute
)

// writCallTimeout bounds one call to the parent agent.
const writCallTimeout = 30 * time.Second

// WritConfig configures a Writ upstream.
type WritConfig struct {
	// SocketPath is the parent deployment's agent socket (its Workload
	// API socket), an absolute path.
	SocketPath string
	// TrustDomain is the trust domain (the parent's and this server's).
	TrustDomain spiffeid.TrustDomain
	Clock       clock.Clock
	Logger      *slog.Logger
}

// Writ is a parent Writ deployment as the upstream authority of a nested
// (downstream) Writ server: the server is a workload of the parent's
// agent, whose entry is downstream. Each CA certificate is signed by the
// parent's server through that agent (DownstreamService.MintX509CA); each
// JWT key is published in the parent's bundle (PublishJWTKey); and Follow
// keeps this server's bundle following the parent's.
type Writ struct {
	td     spiffeid.TrustDomain
	conn   *grpc.ClientConn
	client agentv1.DownstreamServiceClient
	// parentTainted is the sorted set of X.509 authority IDs the parent
	// last announced tainted (nil before its first bundle).
	parentTainted atomic.Pointer[[]string]
	clock         clock.Clock
	log           *slog.Logger
}

// NewWrit returns the upstream of the parent agent at cfg.SocketPath. It
// does not connect yet.
func NewWrit(cfg WritConfig) (*Writ, error) {
	switch {
	case cfg.SocketPath == "" || cfg.SocketPath[0] != '/':
		return nil, fmt.Errorf("%w: the parent agent's socket must be an absolute path, not %q", ErrConfig, cfg.SocketPath)
	case cfg.TrustDomain.IsZero():
		return nil, fmt.Errorf("%w: no trust domain", ErrConfig)
	}
	conn, err := grpc.NewClient("unix://"+cfg.SocketPath,
		append(workloadapi.SecurityHeaderDialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		return nil, fmt.Errorf("%w: parent agent socket: %w", ErrConfig, err)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Writ{td: cfg.TrustDomain, conn: conn, client: agentv1.NewDownstreamServiceClient(conn), clock: cfg.Clock, log: cfg.Logger}, nil
}

// ParentTainted returns the subject key IDs (lowercase hex, sorted) of
// the X.509 authorities the parent deployment last announced tainted on
// the WatchBundle stream Follow reads; none before its first bundle. A
// nested server refuses, as for its own tainted CAs, SVIDs chained to
// them, and tells its agents and downstreams they are tainted. The slice
// must not be modified.
func (w *Writ) ParentTainted() []string {
	if p := w.parentTainted.Load(); p != nil {
		return *p
	}
	return nil
}

// Close closes the connection to the parent agent.
func (w *Writ) Close() error { return w.conn.Close() }

// callErr classifies a failed call to the parent agent.
func callErr(op string, err error) error {
	switch status.Code(err) {
	case codes.InvalidArgument, codes.PermissionDenied, codes.FailedPrecondition, codes.AlreadyExists:
		return fmt.Errorf("%w: %s: %s", ErrRejected, op, printable(status.Convert(err).Message()))
	}
	return fmt.Errorf("%w: %s: %s", ErrUnavailable, op, printable(status.Convert(err).Message()))
}

// MintCA has the parent sign a CA certificate for req.Signer's key and
// verifies the answer as for the other upstreams; the parent's X.509
// authorities are the trust anchors.
func (w *Writ) MintCA(ctx context.Context, req keymanager.CARequest) (*keymanager.CA, error) {
	csrPEM, err := newCSR(req.TrustDomain, req.Signer)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(csrPEM)
	ctx, cancel := context.WithTimeout(ctx, writCallTimeout)
	defer cancel()
	resp, err := w.client.MintX509CA(ctx, &agentv1.MintX509CARequest{Csr: block.Bytes, PreferredTtl: int64(req.TTL / time.Second)})
	if err != nil {
		return nil, callErr("parent MintX509CA", err)
	}
	chain, err := parseDERs("parent CA chain", resp.GetCaChain())
	if err != nil {
		return nil, err
	}
	roots, err := parseDERs("parent X.509 authorities", resp.GetX509Authorities())
	if err != nil {
		return nil, err
	}
	cert := chain[0]
	if err := checkIssued(req.Now, req.TrustDomain, req.Signer.Public(), cert, chain[1:], roots); err != nil {
		return nil, err
	}
	if cert.NotAfter.Before(req.Now.Add(req.TTL)) {
		w.log.Info("the parent cut this server's CA lifetime", "not_after", cert.NotAfter, "wanted", req.Now.Add(req.TTL))
	}
	inter := slices.DeleteFunc(chain[1:], func(c *x509.Certificate) bool { return slices.ContainsFunc(roots, c.Equal) })
	return &keymanager.CA{Cert: cert, Chain: inter, TrustAnchors: roots}, nil
}

// PublishJWTKey publishes the JWT key id in the parent's bundle until
// notAfter, and returns the expiry the parent granted (never later).
func (w *Writ) PublishJWTKey(ctx context.Context, id string, pub crypto.PublicKey, notAfter time.Time) (time.Time, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: JWT key: %w", ErrConfig, err)
	}
	ctx, cancel := context.WithTimeout(ctx, writCallTimeout)
	defer cancel()
	resp, err := w.client.PublishJWTAuthority(ctx, &agentv1.PublishJWTAuthorityRequest{Authority: &agentv1.JWTAuthority{KeyId: id, PublicKey: der, ExpiresAt: notAfter.Unix()}})
	if err != nil {
		return time.Time{}, callErr("parent PublishJWTAuthority", err)
	}
	exp := time.Unix(resp.GetExpiresAt(), 0)
	if !slices.ContainsFunc(resp.GetJwtAuthorities(), func(a *agentv1.JWTAuthority) bool { return a.GetKeyId() == id }) {
		return time.Time{}, fmt.Errorf("%w: the parent's bundle does not list JWT key %s", ErrBadAnswer, id)
	}
	if exp.After(notAfter) {
		exp = notAfter
	}
	return exp, nil
}

func parseDERs(what string, ders [][]byte) ([]*x509.Certificate, error) {
	if len(ders) == 0 {
		return nil, fmt.Errorf("%w: %s: no certificate", ErrBadAnswer, what)
	}
	out := make([]*x509.Certificate, 0, len(ders))
	for _, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrBadAnswer, what, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// BundleStore is the part of the datastore Follow writes.
type BundleStore interface {
	ListCAKeys(ctx context.Context) ([]*datastore.CAKey, error)
	UpdateBundle(ctx context.Context, td spiffeid.TrustDomain, fn func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error)) (*spiffebundle.Bundle, error)
}

// Follow keeps the trust domain's bundle in store following the parent's
// until ctx ends: from the parent agent's WatchBundle stream, every
// bundle it sends makes this server's X.509 authorities the parent's, and
// its JWT authorities the parent's plus this server's own keys (those it
// has records of). When the parent announces tainted X.509 authorities,
// tainted (if not nil) is called with their IDs, after the bundle is
// applied; its error counts as a failure of the stream. The parent's
// tainted set is kept for ParentTainted; when it changes and the bundle
// did not, the bundle's sequence number is raised all the same, so that
// the node API reads the set again and tells the agents, as a local taint
// does. When the stream
// fails it reconnects after a second, doubling up to a minute; the bundle
// stays as it was meanwhile.
func (w *Writ) Follow(ctx context.Context, store BundleStore, tainted func(context.Context, []string) error) error {
	retry := followRetry
	for {
		err := w.follow(ctx, store, tainted, func() { retry = followRetry })
		if ctx.Err() != nil {
			return nil
		}
		w.log.Warn("following the parent's bundle failed; retrying", logkey.Error, err, "retry_in", retry)
		t := w.clock.NewTimer(retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		}
		retry = min(2*retry, maxFollowRetry)
	}
}

// follow reads one WatchBundle stream; received is called after each
// bundle applied.
func (w *Writ) follow(ctx context.Context, store BundleStore, tainted func(context.Context, []string) error, received func()) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := w.client.WatchBundle(ctx, &agentv1.WatchBundleRequest{})
	if err != nil {
		return callErr("parent WatchBundle", err)
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			return callErr("parent WatchBundle", err)
		}
		parent, err := spiffebundle.Parse(w.td, msg.GetBundle())
		if err != nil {
			return fmt.Errorf("%w: parent bundle: %w", ErrBadAnswer, err)
		}
		if len(parent.X509Authorities()) == 0 {
			return fmt.Errorf("%w: the parent's bundle has no X.509 authority", ErrBadAnswer)
		}
		ids := slices.Clone(msg.GetTaintedX509AuthorityIds())
		slices.Sort(ids)
		ids = slices.Compact(ids)
		old := w.parentTainted.Load()
		taintChanged := old == nil && len(ids) > 0 || old != nil && !slices.Equal(*old, ids)
		w.parentTainted.Store(&ids)
		changed, err := ApplyParentBundle(ctx, store, w.td, parent)
		if err != nil {
			return err
		}
		if taintChanged && !changed {
			if err := bumpSequence(ctx, store, w.td); err != nil {
				return err
			}
			changed = true
		}
		if len(ids) > 0 && tainted != nil {
			if err := tainted(ctx, ids); err != nil {
				return fmt.Errorf("replace CAs a tainted parent authority signed: %w", err)
			}
		}
		received()
		seq, _ := parent.SequenceNumber()
		w.log.Debug("parent bundle received", "parent_sequence", seq, "changed", changed)
	}
}

// bumpSequence raises the sequence number of td's bundle in store.
func bumpSequence(ctx context.Context, store BundleStore, td spiffeid.TrustDomain) error {
	_, err := store.UpdateBundle(ctx, td, func(old *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
		if old == nil {
			return nil, errors.New("no local bundle yet")
		}
		b := old.Clone()
		seq, _ := old.SequenceNumber()
		b.SetSequenceNumber(seq + 1)
		return b, nil
	})
	if err != nil {
		return fmt.Errorf("publish the parent's tainted authorities: %w", err)
	}
	return nil
}

// ApplyParentBundle makes the bundle of td in store follow parent: its
// X.509 authorities become parent's, and its JWT authorities parent's
// plus the keys store has records of (this deployment's own). The
// sequence number grows when the content changes. It reports whether it
// did.
func ApplyParentBundle(ctx context.Context, store BundleStore, td spiffeid.TrustDomain, parent *spiffebundle.Bundle) (bool, error) {
	records, err := store.ListCAKeys(ctx)
	if err != nil {
		return false, fmt.Errorf("list CA keys: %w", err)
	}
	own := make(map[string]bool)
	for _, r := range records {
		if r.Kind == datastore.CAKeyJWT {
			own[r.ID] = true
		}
	}
	changed := false
	_, err = store.UpdateBundle(ctx, td, func(old *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
		changed = false
		if old == nil {
			return nil, errors.New("no local bundle yet")
		}
		b := old.Clone()
		for _, c := range b.X509Authorities() {
			if !parent.HasX509Authority(c) {
				b.RemoveX509Authority(c)
			}
		}
		for _, c := range parent.X509Authorities() {
			if !b.HasX509Authority(c) {
				b.AddX509Authority(c)
			}
		}
		for kid := range b.JWTAuthorities() {
			if _, ok := parent.FindJWTAuthority(kid); !ok && !own[kid] {
				b.RemoveJWTAuthority(kid)
			}
		}
		for kid, k := range parent.JWTAuthorities() {
			if own[kid] {
				continue
			}
			if err := b.AddJWTAuthority(kid, k); err != nil {
				return nil, err
			}
		}
		if old.Equal(b) {
			return old, nil
		}
		changed = true
		seq, _ := old.SequenceNumber()
		b.SetSequenceNumber(seq + 1)
		return b, nil
	})
	if err != nil {
		return false, fmt.Errorf("apply the parent's bundle: %w", err)
	}
	return changed, nil
}
