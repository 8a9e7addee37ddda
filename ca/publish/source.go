package publish

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/clock"
)

// DefaultRefreshHint is used for Cache-Control when the bundle sets none.
const DefaultRefreshHint = 5 * time.Minute

// retryInterval is how long Run waits, on its clock, to read the bundle
// again after a failed read (unless the datastore changes first).
const retryInterval = time.Second

// Store is where the bundle lives.
type Store interface {
	FetchBundle(ctx context.Context, td spiffeid.TrustDomain) (*spiffebundle.Bundle, error)
	// Watch returns a channel that receives after changes, and a
	// function that stops it.
	Watch() (<-chan struct{}, func())
}

// ErrNotReady means the Source has not read a bundle yet.
var ErrNotReady = errors.New("publish: no bundle yet")

// document is one encoding of the bundle, ready to send.
type document struct {
	body []byte
	etag string
}

// snapshot is the bundle and its encodings. It never changes once
// published.
type snapshot struct {
	bundle      *spiffebundle.Bundle
	spiffe      document // SPIFFE bundle format (a JWKS with SPIFFE members)
	jwks        document // the JWT authorities as a plain JWKS, for OIDC
	refreshHint time.Duration
	sequence    uint64
}

// Source keeps the trust domain's bundle, encoded, current.
type Source struct {
	td    spiffeid.TrustDomain
	store Store
	log   *slog.Logger
	clk   clock.Clock
	cur   atomic.Pointer[snapshot]
	ready chan struct{}
}

// NewSource returns a Source of td's bundle in store. Run keeps it
// current, retrying failed reads on clk (nil: the system clock).
func NewSource(td spiffeid.TrustDomain, store Store, log *slog.Logger, clk clock.Clock) *Source {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if clk == nil {
		clk = clock.Real()
	}
	return &Source{td: td, store: store, log: log, clk: clk, ready: make(chan struct{})}
}

// Ready is closed once the first bundle is in.
func (s *Source) Ready() <-chan struct{} { return s.ready }

// Run reads the bundle now and after every datastore change until ctx
// ends. A failed read keeps the last bundle and is retried at the next
// change or after a second on the Source's clock.
func (s *Source) Run(ctx context.Context) error {
	changes, stop := s.store.Watch()
	defer stop()
	retry := s.clk.NewTimer(0)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changes:
		case <-retry.C():
		}
		if err := s.refresh(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.log.Warn("bundle for publication not read; serving the last one", "error", err.Error())
			retry.Stop()
			retry.Reset(retryInterval)
		}
	}
}

// Refresh reads the bundle once (Run does this on every change).
func (s *Source) refresh(ctx context.Context) error {
	b, err := s.store.FetchBundle(ctx, s.td)
	if err != nil {
		return err
	}
	// Most datastore changes (entries, agents) leave the bundle as it
	// is: then nothing is encoded again.
	if old := s.cur.Load(); old != nil && old.bundle.Equal(b) {
		return nil
	}
	snap, err := encode(b)
	if err != nil {
		return err
	}
	s.cur.Store(snap)
	select {
	case <-s.ready:
	default:
		close(s.ready)
	}
	return nil
}

func (s *Source) load() (*snapshot, error) {
	snap := s.cur.Load()
	if snap == nil {
		return nil, ErrNotReady
	}
	return snap, nil
}

func encode(b *spiffebundle.Bundle) (*snapshot, error) {
	spiffeJSON, err := b.Marshal()
	if err != nil {
		return nil, fmt.Errorf("publish: encode bundle: %w", err)
	}
	jwks, err := encodeJWKS(b.JWTAuthorities())
	if err != nil {
		return nil, err
	}
	hint, ok := b.RefreshHint()
	if !ok || hint <= 0 {
		hint = DefaultRefreshHint
	}
	seq, _ := b.SequenceNumber()
	return &snapshot{bundle: b, spiffe: newDocument(spiffeJSON), jwks: newDocument(jwks), refreshHint: hint, sequence: seq}, nil
}

func newDocument(body []byte) document {
	sum := sha256.Sum256(body)
	return document{body: body, etag: `"` + base64.RawURLEncoding.EncodeToString(sum[:16]) + `"`}
}

// encodeJWKS encodes the JWT authorities as an RFC 7517 key set with use
// "sig" and the algorithm each key signs with, in key ID order, as OIDC
// relying parties expect.
func encodeJWKS(keys map[string]crypto.PublicKey) ([]byte, error) {
	ids := make([]string, 0, len(keys))
	for id := range keys {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{}}
	for _, id := range ids {
		alg, err := keyAlg(keys[id])
		if err != nil {
			return nil, fmt.Errorf("publish: JWT authority %s: %w", id, err)
		}
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: keys[id], KeyID: id, Use: "sig", Algorithm: alg})
	}
	return json.Marshal(set)
}

// keyAlg is the JWS algorithm Writ signs JWT-SVIDs with for key.
func keyAlg(key crypto.PublicKey) (string, error) {
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return string(jose.ES256), nil
		case elliptic.P384():
			return string(jose.ES384), nil
		case elliptic.P521():
			return string(jose.ES512), nil
		}
	case *rsa.PublicKey:
		return string(jose.RS256), nil
	}
	return "", fmt.Errorf("unsupported key type %T", key)
}
