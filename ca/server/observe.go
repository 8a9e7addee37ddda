package server

import (
	"context"
	"crypto"
	"errors"
	"time"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/internal/logkey"
	"writ.dev/writ/internal/metrics"
)

// Reasons /ready gives for a server that is not ready.
var (
	ErrNotStarted    = errors.New("starting: the node API has not loaded its entries and TLS certificate yet")
	ErrNoSigningKeys = errors.New("no active CA keys")
	ErrNoDatastore   = errors.New("datastore unavailable")
)

// readiness is the server's /ready check: it has loaded its entries and
// TLS certificate, holds active X.509 and JWT keys, and its datastore
// answers.
func (s *Server) readiness(store datastore.Store, km *keymanager.Manager, node interface{ Ready() <-chan struct{} }) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		select {
		case <-node.Ready():
		default:
			return ErrNotStarted
		}
		if a := km.Active(); a == nil || a.X509 == nil || a.JWT.Signer == nil {
			return ErrNoSigningKeys
		}
		if _, err := store.FetchBundle(ctx, s.cfg.TrustDomain); err != nil {
			s.cfg.Logger.Debug("readiness check: datastore did not answer", logkey.Error, err)
			return ErrNoDatastore
		}
		return nil
	}
}

// observeCAKeys makes the key manager's keys the source of the CA gauges,
// read from the datastore at each scrape.
func observeCAKeys(m *metrics.Server, km *keymanager.Manager) {
	m.ObserveCAKeys(func() ([]metrics.CAKey, bool) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		keys, err := km.Keys(ctx)
		if err != nil {
			return nil, false
		}
		out := make([]metrics.CAKey, len(keys))
		for i, k := range keys {
			out[i] = metrics.CAKey{Kind: string(k.Kind), State: string(k.State), NotAfter: k.NotAfter}
		}
		return out, true
	})
}

// countedAuthority counts the failures of an upstream authority.
type countedAuthority struct {
	keymanager.Authority
	m *metrics.Server
}

func (a countedAuthority) MintCA(ctx context.Context, req keymanager.CARequest) (*keymanager.CA, error) {
	ca, err := a.Authority.MintCA(ctx, req)
	if err != nil {
		a.m.UpstreamError()
	}
	return ca, err
}

// countedPublisher is a countedAuthority whose authority also publishes
// JWT keys upstream (keymanager.JWTPublisher).
type countedPublisher struct {
	countedAuthority
	p keymanager.JWTPublisher
}

func (a countedPublisher) PublishJWTKey(ctx context.Context, id string, pub crypto.PublicKey, notAfter time.Time) (time.Time, error) {
	t, err := a.p.PublishJWTKey(ctx, id, pub, notAfter)
	if err != nil {
		a.m.UpstreamError()
	}
	return t, err
}
