package keymanager

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/jwtsvid"
	"writ.dev/writ/ca/keymanager/keystore"
	"writ.dev/writ/ca/x509ca"

	"writ.dev/writ/internal/logkey"
)

// ErrInconsistent means this server's key store and the datastore
// disagree; the server must not start.
var ErrInconsistent = errors.New("CA state inconsistent")

// ErrConfig means the Config is not usable.
var ErrConfig = errors.New("keymanager: invalid configuration")

// ErrAuthority means the Authority failed or returned a CA certificate
// that is not usable; nothing was recorded.
var ErrAuthority = errors.New("keymanager: CA authority failed")

// DefaultRefreshHint is the bundle refresh hint published to consumers.
const DefaultRefreshHint = 5 * time.Minute

// After a failed rotation step Run waits retryAfter, doubling with each
// further failure up to maxRetryAfter; a success resets it. An upstream
// authority that is down is thus asked again soon, then less often.
const (
	retryAfter    = time.Minute
	maxRetryAfter = 16 * time.Minute
)

// maxTimerWait caps each wait of Run, so that a step of the wall clock is
// noticed within it (timers count monotonic time): keys due by the new
// time are rotated then, not when a wait computed before the step would
// have ended.
const maxTimerWait = time.Minute

// maxRounds bounds the policy evaluations of one rotation step. A step
// needs at most three (prepare, activate, nothing left to do).
const maxRounds = 8

// Store is the part of the datastore the key manager uses. Several servers
// may share it.
type Store interface {
	ListCAKeys(ctx context.Context) ([]*datastore.CAKey, error)
	PutCAKey(ctx context.Context, k *datastore.CAKey) error
	DeleteCAKey(ctx context.Context, id string) error
	FetchBundle(ctx context.Context, td spiffeid.TrustDomain) (*spiffebundle.Bundle, error)
	UpdateBundle(ctx context.Context, td spiffeid.TrustDomain, fn func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error)) (*spiffebundle.Bundle, error)
}

// KeyStore holds this server's CA private keys by ID (32 lowercase hex
// digits). The keys never leave it except as a crypto.Signer, and never
// enter the datastore. Implementations return keystore.ErrNotFound,
// keystore.ErrExists and keystore.ErrCorrupt (wrapped) and pass
// keystoretest.Run; see package keystore.
type KeyStore interface {
	// Generate makes and keeps a new key of keyType (see x509ca.KeyTypes).
	Generate(ctx context.Context, id, keyType string) (crypto.Signer, error)
	// Load returns a key Generate made earlier, perhaps in another process.
	Load(ctx context.Context, id string) (crypto.Signer, error)
	// Delete destroys a key.
	Delete(ctx context.Context, id string) error
	// List returns the IDs of every key held.
	List(ctx context.Context) ([]string, error)
}

// Config configures a Manager.
type Config struct {
	// ServerID names this server among those sharing Store; it owns the
	// keys it creates. Required, and must be stable across restarts.
	ServerID string
	// KeyStore holds this server's private keys. Required.
	KeyStore KeyStore
	// Volatile says KeyStore does not outlive the process (keystore.Memory):
	// on start, this server's records whose keys are missing are not an
	// inconsistency but keys lost with the last process. They are retired
	// (they never sign again) and stay published until they expire, so
	// what they signed keeps verifying; then the policy drops them.
	Volatile bool
	// Authority makes the certificate of each new X.509 CA key;
	// SelfSigned if nil.
	Authority   Authority
	TrustDomain spiffeid.TrustDomain
	// KeyType of new keys: ec-p256, ec-p384 or rsa-2048.
	KeyType string
	// CATTL is the lifetime of each CA certificate and JWT key.
	CATTL       time.Duration
	RefreshHint time.Duration
	Store       Store
	Clock       clock.Clock
	Logger      *slog.Logger
	// JWTIssuer, if set, is the iss claim of every JWT-SVID.
	JWTIssuer string
}

// Active is what signs now. It never changes once published; rotation
// publishes a new one.
type Active struct {
	X509 *x509ca.Issuer
	JWT  jwtsvid.Key
	// JWTNotAfter bounds the expiry of JWT-SVIDs signed with JWT.
	JWTNotAfter time.Time
}

// Manager holds this server's CA keys and rotates them.
type Manager struct {
	cfg Config
	mu  sync.Mutex // guards own and lost; held across a whole rotation step
	own map[string]*ownKey
	// lost names this server's records whose keys a Volatile key store
	// lost with an earlier process; they are never loaded.
	lost   map[string]bool
	active atomic.Pointer[Active]
	// kick asks Run to evaluate the policy now (buffered one).
	kick chan struct{}
}

// watcher is implemented by stores that signal each committed change.
type watcher interface {
	Watch() (<-chan struct{}, func())
}

// ownKey is one of this server's keys, loaded from the key store.
type ownKey struct {
	signer crypto.Signer
	// X.509 keys only: the CA certificate and the issuer chain sent after
	// each leaf (see x509ca.Issuer.Chain).
	cert  *x509.Certificate
	chain []*x509.Certificate
}

// New loads this server's CA keys, or creates them when it has none, and
// publishes them in the shared bundle.
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
	if cfg.Authority == nil {
		cfg.Authority = SelfSigned{}
	}
	switch {
	case cfg.ServerID == "":
		return nil, fmt.Errorf("%w: no server ID", ErrConfig)
	case cfg.KeyStore == nil:
		return nil, fmt.Errorf("%w: no key store", ErrConfig)
	case cfg.Store == nil:
		return nil, fmt.Errorf("%w: no datastore", ErrConfig)
	case cfg.TrustDomain.IsZero():
		return nil, fmt.Errorf("%w: no trust domain", ErrConfig)
	}
	if _, err := x509ca.ParseKeyType(cfg.KeyType); err != nil {
		return nil, err
	}
	if cfg.CATTL < time.Minute {
		return nil, fmt.Errorf("CA TTL %s is too short (minimum 1m)", cfg.CATTL)
	}
	m := &Manager{cfg: cfg, own: make(map[string]*ownKey), kick: make(chan struct{}, 1), lost: make(map[string]bool)}
	if err := m.load(ctx); err != nil {
		return nil, err
	}
	if _, err := m.rotate(ctx); err != nil {
		// An authority that fails (an upstream down) while keys that can
		// still sign exist: sign with them; Run retries.
		if !errors.Is(err, ErrAuthority) || m.Active() == nil {
			return nil, err
		}
		m.cfg.Logger.Warn("CA authority failed at start; signing with the current CA keys and retrying", "error", err)
	}
	return m, nil
}

// Active returns the keys that sign now.
func (m *Manager) Active() *Active { return m.active.Load() }

// Run rotates keys on schedule until ctx ends, reading the clock at least
// once a minute, so that a step of the wall clock is noticed within a
// minute. A failed step is retried
// after a minute, then after twice as long each time it fails again (at
// most 16 minutes); the current keys keep signing meanwhile. It also
// evaluates the policy again after an operator's change (Prepare,
// Activate, Taint, Revoke) and, if the store signals changes, whenever the
// bundle's sequence number changes: that is how it learns of changes to
// its keys' records made through other servers (a taint raises the
// sequence number, a revoke removes an authority).
func (m *Manager) Run(ctx context.Context) error {
	var watch <-chan struct{}
	if w, ok := m.cfg.Store.(watcher); ok {
		ch, stop := w.Watch()
		defer stop()
		watch = ch
	}
	retry := retryAfter
	for {
		// The sequence is read before rotate looks at the store, so that a
		// change made while rotate runs still wakes the loop.
		seen := m.bundleSequence(ctx)
		next, err := m.rotate(ctx)
		if err != nil {
			m.cfg.Logger.Error("CA key rotation failed; retrying", logkey.Error, err, "retry_in", retry)
			next = m.cfg.Clock.Now().Add(retry)
			retry = min(2*retry, maxRetryAfter)
		} else {
			retry = retryAfter
		}
		t := m.cfg.Clock.NewTimer(min(maxTimerWait, next.Sub(m.cfg.Clock.Now())))
	wait:
		for {
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C():
				// Timers count monotonic time: the wall clock may have
				// stepped since the wait began. Wait on only while it has
				// not reached next.
				if left := next.Sub(m.cfg.Clock.Now()); left > 0 {
					t.Reset(min(maxTimerWait, left))
					continue
				}
				break wait
			case <-m.kick:
				t.Stop()
				break wait
			case <-watch:
				if m.bundleSequence(ctx) != seen {
					t.Stop()
					break wait
				}
			}
		}
	}
}

// bundleSequence returns the shared bundle's sequence number, or 0 if it
// cannot be read.
func (m *Manager) bundleSequence(ctx context.Context) uint64 {
	b, err := m.cfg.Store.FetchBundle(ctx, m.cfg.TrustDomain)
	if err != nil {
		return 0
	}
	seq, _ := b.SequenceNumber()
	return seq
}

// load reads this server's keys and checks that the key store and the
// datastore agree. It changes nothing unless they do.
func (m *Manager) load(ctx context.Context) error {
	// The bundle is read before the records: servers record a key before
	// they publish it, so a bundle seen here has its records listed below
	// even while another server is starting.
	_, err := m.cfg.Store.FetchBundle(ctx, m.cfg.TrustDomain)
	haveBundle := err == nil
	if err != nil && !errors.Is(err, datastore.ErrNotFound) {
		return fmt.Errorf("fetch bundle: %w", err)
	}
	records, err := m.cfg.Store.ListCAKeys(ctx)
	if err != nil {
		return fmt.Errorf("list CA keys: %w", err)
	}
	if len(records) == 0 && haveBundle {
		return fmt.Errorf("%w: the datastore holds a trust bundle for %s but no CA keys; refusing to create a new CA over existing state", ErrInconsistent, m.cfg.TrustDomain.Name())
	}
	var adopt []*datastore.CAKey
	for _, r := range records {
		switch r.ServerID {
		case m.cfg.ServerID:
		case "":
			// Recorded before keys had owners, by the one server there
			// was: this one, if it holds the key.
			adopt = append(adopt, r)
		default:
			continue
		}
		k, err := m.loadKey(ctx, r)
		if m.cfg.Volatile && r.ServerID == m.cfg.ServerID && errors.Is(err, keystore.ErrNotFound) {
			if err := m.retireLost(ctx, r); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		m.own[r.ID] = k
	}
	if err := m.removeOrphans(ctx, records); err != nil {
		return err
	}
	for _, r := range adopt {
		c := *r
		c.ServerID = m.cfg.ServerID
		if err := m.cfg.Store.PutCAKey(ctx, &c); err != nil {
			return fmt.Errorf("record owner of CA key %s: %w", r.ID, err)
		}
	}
	return nil
}

// retireLost marks r, one of this server's records whose key a Volatile
// key store lost, so that it never signs again: it is retired and stays
// published until it expires.
func (m *Manager) retireLost(ctx context.Context, r *datastore.CAKey) error {
	m.lost[r.ID] = true
	m.cfg.Logger.Warn("CA key lost with an earlier process (volatile key store); it stays published until it expires", logkey.KeyID, r.ID, "kind", string(r.Kind), "not_after", r.NotAfter)
	if r.State == datastore.CAKeyRetired || r.State == datastore.CAKeyTainted {
		return nil
	}
	return m.setState(ctx, m.cfg.Clock.Now(), r, datastore.CAKeyRetired)
}

// loadKey loads the private key of one of this server's records and
// checks it matches the record.
func (m *Manager) loadKey(ctx context.Context, r *datastore.CAKey) (*ownKey, error) {
	if !keystore.ValidID(r.ID) {
		return nil, fmt.Errorf("%w: datastore names a CA key with an invalid ID %q", ErrInconsistent, r.ID)
	}
	signer, err := m.cfg.KeyStore.Load(ctx, r.ID)
	switch {
	case errors.Is(err, keystore.ErrNotFound):
		return nil, fmt.Errorf("%w: CA key %s of this server is in the datastore but not in its key store (%w); restore it from backup (a new CA would be trusted by no agent)", ErrInconsistent, r.ID, err)
	case errors.Is(err, keystore.ErrCorrupt):
		return nil, fmt.Errorf("%w: %w", ErrInconsistent, err)
	case err != nil:
		return nil, fmt.Errorf("CA key %s: %w", r.ID, err)
	}
	k := &ownKey{signer: signer}
	var pub []byte
	switch r.Kind {
	case datastore.CAKeyX509:
		k.cert, k.chain, err = parseCAChain(r.CertDER)
		if err != nil {
			return nil, fmt.Errorf("%w: CA certificate of key %s in the datastore: %w", ErrInconsistent, r.ID, err)
		}
		pub = k.cert.RawSubjectPublicKeyInfo
	case datastore.CAKeyJWT:
		pub = r.PublicKeyDER
	default:
		return nil, fmt.Errorf("%w: CA key %s has unknown kind %q", ErrInconsistent, r.ID, r.Kind)
	}
	storedPub, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil || !bytes.Equal(storedPub, pub) {
		return nil, fmt.Errorf("%w: the key store's key %s does not match CA key %s in the datastore", ErrInconsistent, r.ID, r.ID)
	}
	return k, nil
}

// removeOrphans deletes keys of this server's key store that no record
// names: keys made by a step that failed or crashed before recording them,
// or whose records were removed. Keys that records name as another
// server's are left alone.
func (m *Manager) removeOrphans(ctx context.Context, records []*datastore.CAKey) error {
	ids, err := m.cfg.KeyStore.List(ctx)
	if err != nil {
		return fmt.Errorf("list key store: %w", err)
	}
	for _, id := range ids {
		i := slices.IndexFunc(records, func(r *datastore.CAKey) bool { return r.ID == id })
		switch {
		case i < 0:
			m.cfg.Logger.Warn("removing CA key the datastore does not know (interrupted key creation)", logkey.KeyID, id)
			if err := m.cfg.KeyStore.Delete(ctx, id); err != nil && !errors.Is(err, keystore.ErrNotFound) {
				return fmt.Errorf("remove orphan CA key %s: %w", id, err)
			}
		case records[i].ServerID != m.cfg.ServerID && records[i].ServerID != "":
			m.cfg.Logger.Warn("key store holds a CA key the datastore says is another server's; leaving it alone", logkey.KeyID, id, "owner", records[i].ServerID)
		}
	}
	return nil
}

// rotate applies the rotation policy until it has nothing left to do,
// publishes the bundle, and returns when it next needs to run.
func (m *Manager) rotate(ctx context.Context) (time.Time, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.cfg.Clock.Now()
	for range maxRounds {
		records, err := m.cfg.Store.ListCAKeys(ctx)
		if err != nil {
			return time.Time{}, fmt.Errorf("list CA keys: %w", err)
		}
		if err := m.reconcile(ctx, records); err != nil {
			return time.Time{}, err
		}
		plan := Decide(now, m.cfg.ServerID, records)
		if len(plan.Decisions) == 0 {
			if err := m.publish(ctx, now, records, nil, nil); err != nil {
				return time.Time{}, err
			}
			if err := m.setActive(now, records); err != nil {
				return time.Time{}, err
			}
			return plan.Next, nil
		}
		if err := m.apply(ctx, now, records, plan); err != nil {
			if errors.Is(err, ErrAuthority) && m.active.Load() == nil {
				// At start, with the authority failing: sign with the keys
				// that were active, if they still can.
				if records, lerr := m.cfg.Store.ListCAKeys(ctx); lerr == nil {
					if aerr := m.setActive(now, records); aerr != nil {
						m.cfg.Logger.Debug("no CA keys to sign with while the authority fails", "error", aerr)
					}
				}
			}
			return time.Time{}, err
		}
	}
	return time.Time{}, errors.New("CA key rotation did not settle")
}

// reconcile brings the loaded keys in line with this server's records:
// a record that appeared is loaded, and a key whose record is gone (pruned
// or removed by another server) is forgotten and destroyed.
func (m *Manager) reconcile(ctx context.Context, records []*datastore.CAKey) error {
	for _, r := range records {
		if r.ServerID != m.cfg.ServerID || m.own[r.ID] != nil || m.lost[r.ID] {
			continue
		}
		k, err := m.loadKey(ctx, r)
		if err != nil {
			return err
		}
		m.own[r.ID] = k
	}
	for id := range m.own {
		if slices.ContainsFunc(records, func(r *datastore.CAKey) bool { return r.ID == id }) {
			continue
		}
		if err := m.cfg.KeyStore.Delete(ctx, id); err != nil && !errors.Is(err, keystore.ErrNotFound) {
			return fmt.Errorf("destroy CA key %s: %w", id, err)
		}
		delete(m.own, id)
		m.cfg.Logger.Info("CA key destroyed: its record was removed", logkey.KeyID, id)
	}
	return nil
}

// apply carries out one plan. Drops come last: the bundle stops listing
// the keys first, then their records go, then (for this server's keys)
// the private keys.
func (m *Manager) apply(ctx context.Context, now time.Time, records []*datastore.CAKey, plan Plan) error {
	byID := func(id string) *datastore.CAKey {
		i := slices.IndexFunc(records, func(r *datastore.CAKey) bool { return r.ID == id })
		if i < 0 {
			return nil
		}
		return records[i]
	}
	for _, d := range plan.Decisions {
		switch d.Action {
		case Prepare:
			r, err := m.prepare(ctx, now, d.Kind, records)
			if err != nil {
				return err
			}
			records = append(records, r)
		case Activate, Retire:
			r := byID(d.KeyID)
			state := datastore.CAKeyActive
			if d.Action == Retire {
				state = datastore.CAKeyRetired
			}
			if err := m.setState(ctx, now, r, state); err != nil {
				return err
			}
			m.cfg.Logger.Info("CA key "+d.Action.String()+"d", logkey.KeyID, r.ID, "kind", string(r.Kind))
		}
	}
	drop := plan.dropped()
	if len(drop) == 0 {
		return nil
	}
	if err := m.publish(ctx, now, records, drop, nil); err != nil {
		return err
	}
	for _, id := range drop {
		r := byID(id)
		// Another server may have pruned it first.
		if err := m.cfg.Store.DeleteCAKey(ctx, id); err != nil && !errors.Is(err, datastore.ErrNotFound) {
			return fmt.Errorf("delete CA key %s: %w", id, err)
		}
		if m.own[id] != nil {
			if err := m.cfg.KeyStore.Delete(ctx, id); err != nil && !errors.Is(err, keystore.ErrNotFound) {
				return fmt.Errorf("destroy CA key %s: %w", id, err)
			}
			delete(m.own, id)
		}
		delete(m.lost, id)
		m.cfg.Logger.Info("expired CA key removed", logkey.KeyID, id, "kind", string(r.Kind), "owner", r.ServerID)
	}
	return nil
}

// prepare creates a key of kind, records it, and publishes it: the key
// first, then its record, so the datastore never names a key that does
// not exist; and the bundle before it can sign.
func (m *Manager) prepare(ctx context.Context, now time.Time, kind datastore.CAKeyKind, records []*datastore.CAKey) (*datastore.CAKey, error) {
	id := newKeyID()
	signer, err := m.cfg.KeyStore.Generate(ctx, id, m.cfg.KeyType)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	recorded := false
	defer func() {
		if !recorded {
			// Best effort; a later start removes it as an orphan otherwise.
			if err := m.cfg.KeyStore.Delete(ctx, id); err != nil && !errors.Is(err, keystore.ErrNotFound) {
				m.cfg.Logger.Warn("cannot destroy an unrecorded CA key", logkey.KeyID, id, logkey.Error, err)
			}
		}
	}()
	r := &datastore.CAKey{
		ID:        id,
		Kind:      kind,
		State:     datastore.CAKeyPrepared,
		ServerID:  m.cfg.ServerID,
		KeyType:   m.cfg.KeyType,
		NotBefore: now.Add(-x509ca.Backdate),
		NotAfter:  now.Add(m.cfg.CATTL),
	}
	k := &ownKey{signer: signer}
	var anchors []*x509.Certificate
	switch kind {
	case datastore.CAKeyX509:
		ca, err := m.cfg.Authority.MintCA(ctx, CARequest{TrustDomain: m.cfg.TrustDomain, Signer: signer, Now: now, TTL: m.cfg.CATTL})
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrAuthority, err)
		}
		if err := checkCA(now, m.cfg.TrustDomain, signer, ca); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrAuthority, err)
		}
		k.cert, anchors = ca.Cert, ca.TrustAnchors
		if !slices.ContainsFunc(anchors, ca.Cert.Equal) {
			k.chain = append([]*x509.Certificate{ca.Cert}, ca.Chain...)
		}
		r.CertDER = slices.Clone(ca.Cert.Raw)
		for _, c := range ca.Chain {
			r.CertDER = append(r.CertDER, c.Raw...)
		}
		r.NotBefore, r.NotAfter = ca.Cert.NotBefore, ca.Cert.NotAfter
	case datastore.CAKeyJWT:
		if r.PublicKeyDER, err = x509.MarshalPKIXPublicKey(signer.Public()); err != nil {
			return nil, err
		}
		if p, ok := m.cfg.Authority.(JWTPublisher); ok {
			granted, err := p.PublishJWTKey(ctx, id, signer.Public(), r.NotAfter)
			if err != nil {
				return nil, fmt.Errorf("%w: publish JWT key upstream: %w", ErrAuthority, err)
			}
			if !granted.After(now) {
				return nil, fmt.Errorf("%w: upstream granted JWT key %s no lifetime", ErrAuthority, id)
			}
			if granted.Before(r.NotAfter) {
				r.NotAfter = granted
			}
		}
	}
	if err := m.cfg.Store.PutCAKey(ctx, r); err != nil {
		return nil, fmt.Errorf("record CA key: %w", err)
	}
	recorded = true
	m.own[id] = k
	m.cfg.Logger.Info("CA key prepared", logkey.KeyID, id, "kind", string(kind), "not_after", r.NotAfter)
	if err := m.publish(ctx, now, append(slices.Clip(records), r), nil, anchors); err != nil {
		return nil, err
	}
	return r, nil
}

// checkCA checks what an Authority returned before it is recorded.
func checkCA(now time.Time, td spiffeid.TrustDomain, signer crypto.Signer, ca *CA) error {
	switch {
	case ca == nil || ca.Cert == nil:
		return errors.New("authority returned no CA certificate")
	case len(ca.TrustAnchors) == 0:
		return errors.New("authority returned no trust anchors")
	case !ca.Cert.IsCA || ca.Cert.KeyUsage&x509.KeyUsageCertSign == 0:
		return errors.New("authority returned a certificate that is not a signing CA")
	case !now.Before(ca.Cert.NotAfter):
		return errors.New("authority returned an expired CA certificate")
	}
	pub, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil || !bytes.Equal(pub, ca.Cert.RawSubjectPublicKeyInfo) {
		return errors.New("authority returned a CA certificate for another key")
	}
	// The chain must verify to the anchors, as every SVID it signs will.
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range ca.TrustAnchors {
		roots.AddCert(c)
	}
	for _, c := range ca.Chain {
		inter.AddCert(c)
	}
	if _, err := ca.Cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("authority's CA certificate does not verify to its trust anchors: %w", err)
	}
	for _, u := range ca.Cert.URIs {
		if u.String() != td.IDString() {
			return fmt.Errorf("authority's CA certificate is not for trust domain %s", td.Name())
		}
	}
	return nil
}

// setState records r's new state; a key that stops signing records when.
func (m *Manager) setState(ctx context.Context, now time.Time, r *datastore.CAKey, state datastore.CAKeyState) error {
	c := *r
	if r.State == datastore.CAKeyActive && state != datastore.CAKeyActive {
		c.SignedUntil = now
	}
	c.State = state
	if err := m.cfg.Store.PutCAKey(ctx, &c); err != nil {
		return fmt.Errorf("update CA key %s: %w", r.ID, err)
	}
	*r = c
	return nil
}

// publish makes the shared bundle list every published key of every server
// (see Published), plus anchors, and none of drop; it also prunes X.509
// authorities that have expired. It leaves every other authority alone and
// runs as one atomic update, so servers publishing at once never drop each
// other's keys. The sequence number grows only when the content changes.
func (m *Manager) publish(ctx context.Context, now time.Time, records []*datastore.CAKey, drop []string, anchors []*x509.Certificate) error {
	var dropX509 []*x509.Certificate
	// Authorities to add, with the ID of the record they come from (none
	// for anchors).
	type x509Key struct {
		id   string
		cert *x509.Certificate
	}
	type jwtKey struct {
		id  string
		pub crypto.PublicKey
	}
	var addX509 []x509Key
	var addJWT []jwtKey
	for _, r := range records {
		dropped := slices.Contains(drop, r.ID)
		if !dropped && !Published(now, r) {
			continue
		}
		switch r.Kind {
		case datastore.CAKeyX509:
			cert, chain, err := parseCAChain(r.CertDER)
			if err != nil {
				m.cfg.Logger.Warn("CA key record has a corrupt certificate; not publishing it", logkey.KeyID, r.ID, "owner", r.ServerID, logkey.Error, err)
				continue
			}
			switch {
			case dropped:
				dropX509 = append(dropX509, cert)
			case len(chain) == 0:
				// A self-signed CA is its own trust anchor; other CAs'
				// anchors were published when they were prepared.
				addX509 = append(addX509, x509Key{r.ID, cert})
			}
		case datastore.CAKeyJWT:
			if dropped {
				continue
			}
			pub, err := x509.ParsePKIXPublicKey(r.PublicKeyDER)
			if err != nil {
				m.cfg.Logger.Warn("CA key record has a corrupt public key; not publishing it", logkey.KeyID, r.ID, "owner", r.ServerID, logkey.Error, err)
				continue
			}
			addJWT = append(addJWT, jwtKey{r.ID, pub})
		}
	}
	for _, a := range anchors {
		if now.Before(a.NotAfter) {
			addX509 = append(addX509, x509Key{"", a})
		}
	}
	// added names the records whose authority this update put back in the
	// bundle (of the attempt that was stored: fn may run more than once).
	var added []string
	_, err := m.cfg.Store.UpdateBundle(ctx, m.cfg.TrustDomain, func(old *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
		added = added[:0]
		b := spiffebundle.New(m.cfg.TrustDomain)
		var seq uint64
		if old != nil {
			b = old.Clone()
			seq, _ = old.SequenceNumber()
		}
		for _, c := range b.X509Authorities() {
			if !now.Before(c.NotAfter) {
				b.RemoveX509Authority(c)
			}
		}
		for _, c := range dropX509 {
			b.RemoveX509Authority(c)
		}
		for _, id := range drop {
			b.RemoveJWTAuthority(id)
		}
		for _, k := range addX509 {
			if !b.HasX509Authority(k.cert) {
				b.AddX509Authority(k.cert)
				if k.id != "" {
					added = append(added, k.id)
				}
			}
		}
		for _, k := range addJWT {
			if !b.HasJWTAuthority(k.id) {
				if err := b.AddJWTAuthority(k.id, k.pub); err != nil {
					return nil, err
				}
				added = append(added, k.id)
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
	return m.unpublishRevoked(ctx, records, added)
}

// unpublishRevoked undoes the publication of keys whose record was
// removed (revoked) while publish ran: their records were read before the
// removal, their authorities added after it. Whoever revokes removes the
// record before the authority, so a record read after the publication
// shows whether a re-added key was revoked meanwhile.
func (m *Manager) unpublishRevoked(ctx context.Context, records []*datastore.CAKey, added []string) error {
	if len(added) == 0 {
		return nil
	}
	now, err := m.cfg.Store.ListCAKeys(ctx)
	if err != nil {
		return fmt.Errorf("list CA keys: %w", err)
	}
	var gone []*datastore.CAKey
	for _, id := range added {
		if slices.ContainsFunc(now, func(r *datastore.CAKey) bool { return r.ID == id }) {
			continue
		}
		if i := slices.IndexFunc(records, func(r *datastore.CAKey) bool { return r.ID == id }); i >= 0 {
			gone = append(gone, records[i])
			m.cfg.Logger.Warn("CA key was revoked while being published; removing it from the bundle again", logkey.KeyID, id)
		}
	}
	if len(gone) == 0 {
		return nil
	}
	return m.unpublish(ctx, gone)
}

// setActive publishes, for Active, the keys the policy says sign now.
func (m *Manager) setActive(now time.Time, records []*datastore.CAKey) error {
	a := &Active{}
	for _, kind := range Kinds {
		r := Signing(now, m.cfg.ServerID, records, kind)
		if r == nil || m.own[r.ID] == nil {
			return fmt.Errorf("no active %s CA key after rotation", kind)
		}
		k := m.own[r.ID]
		switch kind {
		case datastore.CAKeyX509:
			a.X509 = &x509ca.Issuer{Cert: k.cert, Signer: k.signer, Chain: k.chain}
		case datastore.CAKeyJWT:
			a.JWT = jwtsvid.Key{ID: r.ID, Signer: k.signer, Issuer: m.cfg.JWTIssuer}
			a.JWTNotAfter = r.NotAfter
		}
	}
	if cur := m.active.Load(); cur != nil && cur.X509.Cert == a.X509.Cert && cur.JWT.ID == a.JWT.ID {
		return nil
	}
	m.active.Store(a)
	return nil
}

// parseCAChain parses a record's CertDER: the CA certificate followed by
// the intermediates above it. It returns the certificate and the issuer
// chain sent after each leaf: empty for a self-signed CA (its own trust
// anchor), otherwise the certificate and the intermediates.
func parseCAChain(der []byte) (*x509.Certificate, []*x509.Certificate, error) {
	certs, err := x509.ParseCertificates(der)
	if err != nil {
		return nil, nil, err
	}
	if len(certs) == 0 {
		return nil, nil, errors.New("no certificate")
	}
	cert := certs[0]
	if len(certs) == 1 && bytes.Equal(cert.RawIssuer, cert.RawSubject) && cert.CheckSignatureFrom(cert) == nil {
		return cert, nil, nil
	}
	return cert, certs, nil
}

func newKeyID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("keymanager: crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b[:])
}
