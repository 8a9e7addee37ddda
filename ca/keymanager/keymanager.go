package keymanager

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/jwtsvid"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/datadir"
)

// ErrInconsistent means the key files and the datastore disagree; the
// server must not start.
var ErrInconsistent = errors.New("CA state inconsistent")

// DefaultRefreshHint is the bundle refresh hint published to consumers.
const DefaultRefreshHint = 5 * time.Minute

// Store is the part of the datastore the key manager uses.
type Store interface {
	ListCAKeys(ctx context.Context) ([]*datastore.CAKey, error)
	PutCAKey(ctx context.Context, k *datastore.CAKey) error
	DeleteCAKey(ctx context.Context, id string) error
	FetchBundle(ctx context.Context, td spiffeid.TrustDomain) (*spiffebundle.Bundle, error)
	UpdateBundle(ctx context.Context, td spiffeid.TrustDomain, fn func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error)) (*spiffebundle.Bundle, error)
}

// Config configures a Manager.
type Config struct {
	// KeyDir holds the private key files; it is created 0700.
	KeyDir      string
	TrustDomain spiffeid.TrustDomain
	// KeyType of new keys: ec-p256, ec-p384 or rsa-2048.
	KeyType string
	// CATTL is the lifetime of each CA certificate and JWT key.
	CATTL       time.Duration
	RefreshHint time.Duration
	Store       Store
	Clock       clock.Clock
	Logger      *slog.Logger
}

// Active is what signs now. It never changes once published; rotation
// publishes a new one.
type Active struct {
	X509 *x509ca.Issuer
	JWT  jwtsvid.Key
	// JWTNotAfter bounds the expiry of JWT-SVIDs signed with JWT.
	JWTNotAfter time.Time
}

// Manager holds the CA keys and rotates them.
type Manager struct {
	cfg    Config
	mu     sync.Mutex // guards keys; held across a whole rotation step
	keys   []*key
	active atomic.Pointer[Active]
}

type key struct {
	meta   *datastore.CAKey
	signer crypto.Signer
	cert   *x509.Certificate // X.509 keys only
}

// New loads the CA keys, or creates them on a first start, and publishes
// them in the bundle.
func New(ctx context.Context, cfg Config) (*Manager, error) {
	if cfg.RefreshHint == 0 {
		cfg.RefreshHint = DefaultRefreshHint
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if _, err := x509ca.ParseKeyType(cfg.KeyType); err != nil {
		return nil, err
	}
	if cfg.CATTL < time.Minute {
		return nil, fmt.Errorf("CA TTL %s is too short (minimum 1m)", cfg.CATTL)
	}
	if err := datadir.MkdirPrivate(cfg.KeyDir); err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg}
	if err := m.load(ctx); err != nil {
		return nil, err
	}
	if _, err := m.rotate(ctx); err != nil {
		return nil, err
	}
	return m, nil
}

// Active returns the keys that sign now.
func (m *Manager) Active() *Active { return m.active.Load() }

// Run rotates keys on schedule until ctx ends. A failed step is retried
// after a minute; the current keys keep signing meanwhile.
func (m *Manager) Run(ctx context.Context) error {
	for {
		next, err := m.rotate(ctx)
		if err != nil {
			m.cfg.Logger.Error("CA key rotation failed; retrying", "error", err)
			next = m.cfg.Clock.Now().Add(time.Minute)
		}
		t := m.cfg.Clock.NewTimer(next.Sub(m.cfg.Clock.Now()))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		}
	}
}

// load reads the key metadata and files and checks they agree.
func (m *Manager) load(ctx context.Context) error {
	metas, err := m.cfg.Store.ListCAKeys(ctx)
	if err != nil {
		return fmt.Errorf("list CA keys: %w", err)
	}
	if len(metas) == 0 {
		if _, err := m.cfg.Store.FetchBundle(ctx, m.cfg.TrustDomain); err == nil {
			return fmt.Errorf("%w: the datastore holds a trust bundle for %s but no CA keys; refusing to create a new CA over existing state", ErrInconsistent, m.cfg.TrustDomain.Name())
		} else if !errors.Is(err, datastore.ErrNotFound) {
			return fmt.Errorf("fetch bundle: %w", err)
		}
		return m.removeOrphans(nil)
	}
	for _, meta := range metas {
		k, err := m.loadKey(meta)
		if err != nil {
			return err
		}
		m.keys = append(m.keys, k)
	}
	return m.removeOrphans(metas)
}

func (m *Manager) loadKey(meta *datastore.CAKey) (*key, error) {
	if !validKeyID(meta.ID) {
		return nil, fmt.Errorf("%w: datastore names a CA key with an invalid ID %q", ErrInconsistent, meta.ID)
	}
	path := m.keyPath(meta.ID)
	data, err := datadir.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: CA key %s is in the datastore but its key file %s is missing; restore it from backup (a new CA would be trusted by no agent)", ErrInconsistent, meta.ID, path)
	}
	if err != nil {
		return nil, fmt.Errorf("CA key file: %w", err)
	}
	signer, err := parseKey(data)
	if err != nil {
		return nil, fmt.Errorf("%w: CA key file %s is corrupt: %v", ErrInconsistent, path, err)
	}
	k := &key{meta: meta, signer: signer}
	var pub []byte
	switch meta.Kind {
	case datastore.CAKeyX509:
		k.cert, err = x509.ParseCertificate(meta.CertDER)
		if err != nil {
			return nil, fmt.Errorf("%w: CA certificate of key %s in the datastore is corrupt: %v", ErrInconsistent, meta.ID, err)
		}
		pub = k.cert.RawSubjectPublicKeyInfo
	case datastore.CAKeyJWT:
		pub = meta.PublicKeyDER
	default:
		return nil, fmt.Errorf("%w: CA key %s has unknown kind %q", ErrInconsistent, meta.ID, meta.Kind)
	}
	filePub, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil || !slices.Equal(filePub, pub) {
		return nil, fmt.Errorf("%w: key file %s does not match CA key %s in the datastore", ErrInconsistent, path, meta.ID)
	}
	return k, nil
}

// removeOrphans deletes key files the datastore does not know: keys made
// by a first start that crashed before recording them.
func (m *Manager) removeOrphans(metas []*datastore.CAKey) error {
	files, err := filepath.Glob(filepath.Join(m.cfg.KeyDir, "*.pem"))
	if err != nil {
		return err
	}
	for _, f := range files {
		id := strings.TrimSuffix(filepath.Base(f), ".pem")
		if slices.ContainsFunc(metas, func(k *datastore.CAKey) bool { return k.ID == id }) {
			continue
		}
		m.cfg.Logger.Warn("removing CA key file the datastore does not know (interrupted key creation)", "file", f)
		if err := os.Remove(f); err != nil {
			return err
		}
	}
	return nil
}

// rotate brings both kinds of key to where the schedule says they should
// be, publishes the bundle, and returns when it next needs to run.
func (m *Manager) rotate(ctx context.Context) (time.Time, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.cfg.Clock.Now()
	next := now.Add(24 * time.Hour)
	var retired []*key
	for _, kind := range []datastore.CAKeyKind{datastore.CAKeyX509, datastore.CAKeyJWT} {
		n, gone, err := m.rotateKind(ctx, kind, now)
		if err != nil {
			return time.Time{}, err
		}
		if n.Before(next) {
			next = n
		}
		retired = append(retired, gone...)
	}
	if err := m.publish(ctx, retired); err != nil {
		return time.Time{}, err
	}
	// Forget expired keys only once the bundle no longer lists them.
	for _, k := range retired {
		if err := m.cfg.Store.DeleteCAKey(ctx, k.meta.ID); err != nil {
			return time.Time{}, fmt.Errorf("delete CA key %s: %w", k.meta.ID, err)
		}
		if err := os.Remove(m.keyPath(k.meta.ID)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return time.Time{}, err
		}
		m.cfg.Logger.Info("expired CA key removed", "key_id", k.meta.ID, "kind", string(k.meta.Kind))
	}
	m.keys = slices.DeleteFunc(m.keys, func(k *key) bool { return slices.Contains(retired, k) })
	m.setActive()
	return next, nil
}

// rotateKind advances the keys of one kind. It returns when it next needs
// to run and the expired keys to drop.
func (m *Manager) rotateKind(ctx context.Context, kind datastore.CAKeyKind, now time.Time) (time.Time, []*key, error) {
	var active, prepared *key
	var expired []*key
	for _, k := range m.keys {
		if k.meta.Kind != kind {
			continue
		}
		switch {
		case !now.Before(k.meta.NotAfter):
			expired = append(expired, k)
		case k.meta.State == datastore.CAKeyActive && (active == nil || k.meta.NotAfter.After(active.meta.NotAfter)):
			active = k
		case k.meta.State == datastore.CAKeyPrepared && (prepared == nil || k.meta.NotAfter.After(prepared.meta.NotAfter)):
			prepared = k
		}
	}
	// No usable active key: first start, an interrupted activation, or a
	// server that was down until its CA expired.
	if active == nil {
		if prepared == nil {
			var err error
			if prepared, err = m.newKey(ctx, kind, now); err != nil {
				return time.Time{}, nil, err
			}
		}
		if err := m.activate(ctx, prepared, nil); err != nil {
			return time.Time{}, nil, err
		}
		active, prepared = prepared, nil
	}
	life := active.meta.NotAfter.Sub(active.meta.NotBefore)
	prepareAt := active.meta.NotBefore.Add(life / 2)
	activateAt := active.meta.NotAfter.Add(-life / 6)
	if prepared == nil && !now.Before(prepareAt) {
		var err error
		if prepared, err = m.newKey(ctx, kind, now); err != nil {
			return time.Time{}, nil, err
		}
	}
	if prepared != nil && !now.Before(activateAt) {
		if err := m.activate(ctx, prepared, active); err != nil {
			return time.Time{}, nil, err
		}
		active, prepared = prepared, nil
		life = active.meta.NotAfter.Sub(active.meta.NotBefore)
		prepareAt = active.meta.NotBefore.Add(life / 2)
		activateAt = active.meta.NotAfter.Add(-life / 6)
	}
	// Other active keys (left by an interrupted activation) retire.
	for _, k := range m.keys {
		if k.meta.Kind == kind && k != active && k.meta.State == datastore.CAKeyActive && !slices.Contains(expired, k) {
			if err := m.setState(ctx, k, datastore.CAKeyRetired); err != nil {
				return time.Time{}, nil, err
			}
		}
	}
	next := activateAt
	if prepared == nil {
		next = prepareAt
	}
	for _, k := range m.keys {
		if k.meta.Kind == kind && k.meta.NotAfter.After(now) && k.meta.NotAfter.Before(next) {
			next = k.meta.NotAfter
		}
	}
	return next, expired, nil
}

// newKey creates a prepared key: the key file first, then its metadata,
// so that the datastore never names a key that has no file.
func (m *Manager) newKey(ctx context.Context, kind datastore.CAKeyKind, now time.Time) (*key, error) {
	signer, err := x509ca.GenerateKey(m.cfg.KeyType)
	if err != nil {
		return nil, err
	}
	meta := &datastore.CAKey{
		ID:        newKeyID(),
		Kind:      kind,
		State:     datastore.CAKeyPrepared,
		KeyType:   m.cfg.KeyType,
		NotBefore: now.Add(-x509ca.Backdate),
		NotAfter:  now.Add(m.cfg.CATTL),
	}
	k := &key{meta: meta, signer: signer}
	switch kind {
	case datastore.CAKeyX509:
		k.cert, err = x509ca.NewSelfSignedCA(now, m.cfg.TrustDomain, signer, m.cfg.CATTL)
		if err != nil {
			return nil, err
		}
		meta.CertDER = k.cert.Raw
		meta.NotBefore, meta.NotAfter = k.cert.NotBefore, k.cert.NotAfter
	case datastore.CAKeyJWT:
		meta.PublicKeyDER, err = x509.MarshalPKIXPublicKey(signer.Public())
		if err != nil {
			return nil, err
		}
	}
	der, err := x509.MarshalPKCS8PrivateKey(signer)
	if err != nil {
		return nil, err
	}
	if err := datadir.WriteFile(m.keyPath(meta.ID), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil {
		return nil, err
	}
	if err := m.cfg.Store.PutCAKey(ctx, meta); err != nil {
		return nil, fmt.Errorf("record CA key: %w", err)
	}
	m.keys = append(m.keys, k)
	m.cfg.Logger.Info("CA key prepared", "key_id", meta.ID, "kind", string(kind), "not_after", meta.NotAfter)
	// Publish before it can sign.
	if err := m.publish(ctx, nil); err != nil {
		return nil, err
	}
	return k, nil
}

func (m *Manager) activate(ctx context.Context, next, prev *key) error {
	if err := m.setState(ctx, next, datastore.CAKeyActive); err != nil {
		return err
	}
	if prev != nil {
		if err := m.setState(ctx, prev, datastore.CAKeyRetired); err != nil {
			return err
		}
	}
	m.cfg.Logger.Info("CA key activated", "key_id", next.meta.ID, "kind", string(next.meta.Kind))
	return nil
}

func (m *Manager) setState(ctx context.Context, k *key, state datastore.CAKeyState) error {
	meta := *k.meta
	meta.State = state
	if err := m.cfg.Store.PutCAKey(ctx, &meta); err != nil {
		return fmt.Errorf("update CA key %s: %w", meta.ID, err)
	}
	k.meta = &meta
	return nil
}

// publish makes the local bundle list every current key and none of drop,
// leaving authorities it does not own alone. The sequence number grows
// only when the content changes.
func (m *Manager) publish(ctx context.Context, drop []*key) error {
	_, err := m.cfg.Store.UpdateBundle(ctx, m.cfg.TrustDomain, func(old *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
		b := spiffebundle.New(m.cfg.TrustDomain)
		var seq uint64
		if old != nil {
			b = old.Clone()
			seq, _ = old.SequenceNumber()
		}
		for _, k := range drop {
			if k.cert != nil {
				b.RemoveX509Authority(k.cert)
			} else {
				b.RemoveJWTAuthority(k.meta.ID)
			}
		}
		for _, k := range m.keys {
			if slices.Contains(drop, k) {
				continue
			}
			if k.cert != nil {
				if !b.HasX509Authority(k.cert) {
					b.AddX509Authority(k.cert)
				}
			} else if !b.HasJWTAuthority(k.meta.ID) {
				if err := b.AddJWTAuthority(k.meta.ID, k.signer.Public()); err != nil {
					return nil, err
				}
			}
		}
		hint, _ := b.RefreshHint()
		if old != nil && old.Equal(b) && hint == m.cfg.RefreshHint {
			return old, nil
		}
		b.SetRefreshHint(m.cfg.RefreshHint)
		b.SetSequenceNumber(seq + 1)
		return b, nil
	})
	if err != nil {
		return fmt.Errorf("publish bundle: %w", err)
	}
	return nil
}

func (m *Manager) setActive() {
	a := &Active{}
	for _, k := range m.keys {
		if k.meta.State != datastore.CAKeyActive {
			continue
		}
		if k.cert != nil {
			a.X509 = &x509ca.Issuer{Cert: k.cert, Signer: k.signer}
		} else {
			a.JWT = jwtsvid.Key{ID: k.meta.ID, Signer: k.signer}
			a.JWTNotAfter = k.meta.NotAfter
		}
	}
	m.active.Store(a)
}

func (m *Manager) keyPath(id string) string { return filepath.Join(m.cfg.KeyDir, id+".pem") }

func newKeyID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("keymanager: crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b[:])
}

func validKeyID(id string) bool {
	return len(id) == 32 && strings.Trim(id, "0123456789abcdef") == ""
}

func parseKey(data []byte) (crypto.Signer, error) {
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" || len(strings.TrimSpace(string(rest))) != 0 {
		return nil, errors.New("not a single PKCS#8 PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key of type %T cannot sign", k)
	}
	return s, nil
}
