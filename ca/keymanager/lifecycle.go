package keymanager

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/keymanager/keystore"
	"writ.dev/writ/ca/x509ca"

	"writ.dev/writ/internal/logkey"
)

// Errors of the operator's lifecycle operations (Prepare, Activate, Taint,
// Revoke). They carry no secret: their text may be shown to the caller.
var (
	// ErrUnknownKey means no CA key of that kind has that ID.
	ErrUnknownKey = errors.New("no such CA key")
	// ErrKeyState means the key's state does not allow the operation.
	ErrKeyState = errors.New("not allowed in the key's state")
	// ErrTooEarly means the operation would be unsafe yet; it can be
	// forced.
	ErrTooEarly = errors.New("too early")
	// ErrNotOwner means the key belongs to another server, which alone
	// may do this; the message names it.
	ErrNotOwner = errors.New("CA key belongs to another server")
	// ErrKind means the kind is neither x509 nor jwt.
	ErrKind = errors.New("unknown CA key kind")
)

// KeyInfo describes one CA key as operators see it.
type KeyInfo struct {
	Kind datastore.CAKeyKind
	// ID names the key to operators: for X.509, the CA certificate's
	// subject key ID in lowercase hex; for JWT, the key ID (kid).
	ID string
	// RecordID is the ID of the datastore record (the kid for JWT keys).
	RecordID string
	State    datastore.CAKeyState
	// ServerID is the server that holds the private key.
	ServerID    string
	NotBefore   time.Time
	NotAfter    time.Time
	SignedUntil time.Time
	// UpstreamChain: subjects of the certificates above an X.509 CA
	// signed by an upstream, from its issuer to the trust anchor.
	UpstreamChain []string
}

// RevokeOptions tunes Revoke.
type RevokeOptions struct {
	// Force revokes an X.509 CA key even though X.509-SVIDs it signed may
	// still be valid.
	Force bool
	// MaxX509SVIDTTL is the longest lifetime of an X.509-SVID the key
	// could have signed.
	MaxX509SVIDTTL time.Duration
}

// CheckKind returns ErrKind unless kind is x509 or jwt.
func CheckKind(kind datastore.CAKeyKind) error {
	if !slices.Contains(Kinds, kind) {
		return fmt.Errorf("%w %q: want x509 or jwt", ErrKind, string(kind))
	}
	return nil
}

// DisplayID returns the ID operators know r by (see KeyInfo.ID).
func DisplayID(r *datastore.CAKey) (string, error) {
	if r.Kind != datastore.CAKeyX509 {
		return r.ID, nil
	}
	cert, _, err := parseCAChain(r.CertDER)
	if err != nil {
		return "", fmt.Errorf("CA key %s: %w", r.ID, err)
	}
	return hex.EncodeToString(cert.SubjectKeyId), nil
}

// Info describes record r.
func Info(r *datastore.CAKey) (KeyInfo, error) {
	id, err := DisplayID(r)
	if err != nil {
		return KeyInfo{}, err
	}
	k := KeyInfo{
		Kind: r.Kind, ID: id, RecordID: r.ID, State: r.State, ServerID: r.ServerID,
		NotBefore: r.NotBefore, NotAfter: r.NotAfter, SignedUntil: r.SignedUntil,
	}
	if r.Kind == datastore.CAKeyX509 {
		certs, err := x509.ParseCertificates(r.CertDER)
		if err != nil {
			return KeyInfo{}, err
		}
		if _, chain, _ := parseCAChain(r.CertDER); len(chain) > 0 {
			for _, c := range certs[1:] {
				k.UpstreamChain = append(k.UpstreamChain, c.Subject.String())
			}
			last := certs[len(certs)-1]
			if last.Issuer.String() != last.Subject.String() {
				k.UpstreamChain = append(k.UpstreamChain, last.Issuer.String())
			}
		}
	}
	return k, nil
}

// RevocableAt is when every X.509-SVID that key r could have signed has
// expired: maxSVIDTTL after it stopped signing, or its NotAfter if that
// is sooner or the time it stopped signing is unknown; the zero time if
// it never signed. A JWT key may be
// revoked at any time (its JWT-SVIDs stop validating, which is the point).
func RevocableAt(r *datastore.CAKey, maxSVIDTTL time.Duration) time.Time {
	switch {
	case r.Kind == datastore.CAKeyJWT:
		return time.Time{}
	case r.SignedUntil.IsZero():
		return r.NotAfter
	case !r.SignedUntil.After(r.NotBefore):
		// It never signed.
		return time.Time{}
	}
	return earlier(r.NotAfter, r.SignedUntil.Add(maxSVIDTTL))
}

// PublishedSince is when key r was put in the bundle, at the latest: it
// is published as it is prepared, and NotBefore is backdated from then
// (and truncated to the second).
func PublishedSince(r *datastore.CAKey) time.Time {
	return r.NotBefore.Add(x509ca.Backdate + time.Second)
}

// Keys describes every CA key of every server, X.509 first, oldest first.
func (m *Manager) Keys(ctx context.Context) ([]KeyInfo, error) {
	records, err := m.cfg.Store.ListCAKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list CA keys: %w", err)
	}
	out := make([]KeyInfo, 0, len(records))
	for _, r := range records {
		k, err := Info(r)
		if err != nil {
			m.cfg.Logger.Warn("CA key record is corrupt; not listing it", logkey.KeyID, r.ID, "owner", r.ServerID, logkey.Error, err)
			continue
		}
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b KeyInfo) int {
		if a.Kind != b.Kind {
			if a.Kind == datastore.CAKeyX509 {
				return -1
			}
			return 1
		}
		if c := a.NotBefore.Compare(b.NotBefore); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// begin takes the manager's lock and reads the records. The caller must
// unlock m.mu.
func (m *Manager) begin(ctx context.Context, kind datastore.CAKeyKind) (time.Time, []*datastore.CAKey, error) {
	if err := CheckKind(kind); err != nil {
		return time.Time{}, nil, err
	}
	m.mu.Lock()
	records, err := m.cfg.Store.ListCAKeys(ctx)
	if err != nil {
		m.mu.Unlock()
		return time.Time{}, nil, fmt.Errorf("list CA keys: %w", err)
	}
	if err := m.reconcile(ctx, records); err != nil {
		m.mu.Unlock()
		return time.Time{}, nil, err
	}
	return m.cfg.Clock.Now(), records, nil
}

// find returns the record of kind whose operator ID is id.
func find(records []*datastore.CAKey, kind datastore.CAKeyKind, id string) (*datastore.CAKey, error) {
	for _, r := range records {
		if r.Kind != kind {
			continue
		}
		if did, err := DisplayID(r); err == nil && did == id {
			return r, nil
		}
	}
	return nil, fmt.Errorf("%w: %s %q", ErrUnknownKey, kind, id)
}

// Prepare makes a new key of kind for this server now, records it and
// publishes it in the bundle; it does not sign until activated (by
// Activate, or by the schedule). Refused if this server already has a
// prepared key of kind.
func (m *Manager) Prepare(ctx context.Context, kind datastore.CAKeyKind) (KeyInfo, error) {
	now, records, err := m.begin(ctx, kind)
	if err != nil {
		return KeyInfo{}, err
	}
	defer m.mu.Unlock()
	if p := newest(now, m.cfg.ServerID, records, kind, datastore.CAKeyPrepared); p != nil {
		id, _ := DisplayID(p)
		return KeyInfo{}, fmt.Errorf("%w: this server already has a prepared %s key, %s: activate or taint it first", ErrKeyState, kind, id)
	}
	r, err := m.prepare(ctx, now, kind, records)
	if err != nil {
		return KeyInfo{}, err
	}
	m.poke()
	return Info(r)
}

// Activate makes this server's prepared key of kind with operator ID id
// sign, and retires the key that signed until now. Unless force, it is
// refused until the key has been in the bundle for the refresh hint, so
// that relying parties have had it before it signs.
func (m *Manager) Activate(ctx context.Context, kind datastore.CAKeyKind, id string, force bool) (KeyInfo, error) {
	now, records, err := m.begin(ctx, kind)
	if err != nil {
		return KeyInfo{}, err
	}
	defer m.mu.Unlock()
	r, err := find(records, kind, id)
	if err != nil {
		return KeyInfo{}, err
	}
	if err := m.activate(ctx, now, records, r, force); err != nil {
		return KeyInfo{}, err
	}
	return Info(r)
}

func (m *Manager) activate(ctx context.Context, now time.Time, records []*datastore.CAKey, r *datastore.CAKey, force bool) error {
	id, _ := DisplayID(r)
	switch {
	case r.ServerID != m.cfg.ServerID:
		return fmt.Errorf("%w: %s key %s is held by server %s; activate it through that server", ErrNotOwner, r.Kind, id, r.ServerID)
	case r.State != datastore.CAKeyPrepared:
		return fmt.Errorf("%w: %s key %s is %s, not prepared", ErrKeyState, r.Kind, id, r.State)
	case !Published(now, r):
		return fmt.Errorf("%w: %s key %s has expired", ErrKeyState, r.Kind, id)
	}
	if at := PublishedSince(r).Add(m.cfg.RefreshHint); !force && now.Before(at) {
		return fmt.Errorf("%w: %s key %s has been in the bundle for less than the refresh hint (%s); relying parties may not have it yet: wait until %s, or force", ErrTooEarly, r.Kind, id, m.cfg.RefreshHint, at.UTC().Format(time.RFC3339))
	}
	// It was published as it was prepared; publish again in case that
	// step failed, before it signs.
	if err := m.publish(ctx, now, records, nil, nil); err != nil {
		return err
	}
	cur := Signing(now, m.cfg.ServerID, records, r.Kind)
	if err := m.setState(ctx, now, r, datastore.CAKeyActive); err != nil {
		return err
	}
	m.cfg.Logger.Info("CA key activated by an operator", logkey.KeyID, r.ID, "kind", string(r.Kind), "forced", force)
	if cur != nil {
		if err := m.setState(ctx, now, cur, datastore.CAKeyRetired); err != nil {
			return err
		}
		m.cfg.Logger.Info("CA key retired", logkey.KeyID, cur.ID, "kind", string(cur.Kind))
	}
	if err := m.setActive(now, records); err != nil {
		return err
	}
	m.poke()
	return nil
}

// Rotate makes a new key of each kind active at once: the prepared key
// if this server has one, otherwise a new one. beforeActivate, if not
// nil, runs after the new keys are published and before they sign; its
// error stops the rotation with the keys prepared.
func (m *Manager) Rotate(ctx context.Context, beforeActivate func(context.Context) error) ([]KeyInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.cfg.Clock.Now()
	records, err := m.cfg.Store.ListCAKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list CA keys: %w", err)
	}
	if err := m.reconcile(ctx, records); err != nil {
		return nil, err
	}
	var next []*datastore.CAKey
	for _, kind := range Kinds {
		p := newest(now, m.cfg.ServerID, records, kind, datastore.CAKeyPrepared)
		if p == nil {
			if p, err = m.prepare(ctx, now, kind, records); err != nil {
				return nil, err
			}
			records = append(records, p)
		}
		next = append(next, p)
	}
	if beforeActivate != nil {
		m.mu.Unlock()
		err := beforeActivate(ctx)
		m.mu.Lock()
		if err != nil {
			return nil, err
		}
		// The schedule may have run meanwhile: start over from the records.
		now = m.cfg.Clock.Now()
		if records, err = m.cfg.Store.ListCAKeys(ctx); err != nil {
			return nil, fmt.Errorf("list CA keys: %w", err)
		}
		for i, p := range next {
			j := slices.IndexFunc(records, func(r *datastore.CAKey) bool { return r.ID == p.ID })
			if j < 0 {
				return nil, fmt.Errorf("%w: %s key %s was removed during the rotation", ErrUnknownKey, p.Kind, p.ID)
			}
			next[i] = records[j]
		}
	}
	var out []KeyInfo
	for _, p := range next {
		if p.State != datastore.CAKeyActive {
			if err := m.activate(ctx, now, records, p, true); err != nil {
				return nil, err
			}
		}
		k, err := Info(p)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, nil
}

// Taint marks a key tainted: it never signs again, stays in the bundle
// until revoked (or expired), and agents re-sign what it signed. The
// active key cannot be tainted: rotate first. Any server's retired key
// may be tainted through any server; a prepared key only through the
// server that holds it (which alone may activate it). The bundle's
// sequence number is raised so that every server and agent sees the
// change.
func (m *Manager) Taint(ctx context.Context, kind datastore.CAKeyKind, id string) (KeyInfo, error) {
	_, records, err := m.begin(ctx, kind)
	if err != nil {
		return KeyInfo{}, err
	}
	defer m.mu.Unlock()
	r, err := find(records, kind, id)
	if err != nil {
		return KeyInfo{}, err
	}
	c := *r
	switch r.State {
	case datastore.CAKeyTainted:
		// Announce again, in case the first announcement failed.
		if err := m.announce(ctx); err != nil {
			return KeyInfo{}, err
		}
		return Info(r)
	case datastore.CAKeyActive:
		return KeyInfo{}, fmt.Errorf("%w: %s key %s is active (on server %s); rotate first, then taint it", ErrKeyState, kind, id, r.ServerID)
	case datastore.CAKeyPrepared:
		if r.ServerID != m.cfg.ServerID {
			return KeyInfo{}, fmt.Errorf("%w: %s key %s is prepared on server %s, which may activate it; taint it through that server", ErrNotOwner, kind, id, r.ServerID)
		}
		// It never signed.
		c.SignedUntil = r.NotBefore
	case datastore.CAKeyRetired:
	default:
		return KeyInfo{}, fmt.Errorf("%w: %s key %s is in unknown state %q", ErrKeyState, kind, id, r.State)
	}
	c.State = datastore.CAKeyTainted
	if err := m.cfg.Store.PutCAKey(ctx, &c); err != nil {
		return KeyInfo{}, fmt.Errorf("update CA key %s: %w", r.ID, err)
	}
	*r = c
	m.cfg.Logger.Warn("CA key tainted", logkey.KeyID, r.ID, "kind", string(kind), "owner", r.ServerID)
	if err := m.announce(ctx); err != nil {
		return KeyInfo{}, err
	}
	m.poke()
	return Info(r)
}

// Revoke removes a tainted key: its record first, then its authority from
// the bundle, then (if this server holds it) the private key. A server
// holding it destroys its private key when it next sees the record gone.
// For X.509 keys it is refused, unless opts.Force, until every
// X.509-SVID the key could have signed has expired (RevocableAt).
//
// The record goes before the bundle entry because servers publish keys
// from their records: a key without a record is never published again
// (publish removes one it added while the record was being deleted).
//
// An X.509 CA signed by an upstream is not itself in the bundle (the
// upstream root is); revoking it removes its record and key only.
func (m *Manager) Revoke(ctx context.Context, kind datastore.CAKeyKind, id string, opts RevokeOptions) (KeyInfo, error) {
	now, records, err := m.begin(ctx, kind)
	if err != nil {
		return KeyInfo{}, err
	}
	defer m.mu.Unlock()
	r, err := find(records, kind, id)
	if err != nil {
		return KeyInfo{}, err
	}
	if r.State != datastore.CAKeyTainted {
		return KeyInfo{}, fmt.Errorf("%w: %s key %s is %s, not tainted: taint it first", ErrKeyState, kind, id, r.State)
	}
	if at := RevocableAt(r, opts.MaxX509SVIDTTL); !opts.Force && now.Before(at) {
		return KeyInfo{}, fmt.Errorf("%w: X.509-SVIDs signed by %s key %s may be valid until %s; revoke then, or force", ErrTooEarly, kind, id, at.UTC().Format(time.RFC3339))
	}
	info, err := Info(r)
	if err != nil {
		return KeyInfo{}, err
	}
	if err := m.cfg.Store.DeleteCAKey(ctx, r.ID); err != nil {
		if errors.Is(err, datastore.ErrNotFound) {
			return KeyInfo{}, fmt.Errorf("%w: %s %q", ErrUnknownKey, kind, id)
		}
		return KeyInfo{}, fmt.Errorf("delete CA key %s: %w", r.ID, err)
	}
	if err := m.unpublish(ctx, []*datastore.CAKey{r}); err != nil {
		return KeyInfo{}, err
	}
	if m.own[r.ID] != nil {
		if err := m.cfg.KeyStore.Delete(ctx, r.ID); err != nil && !errors.Is(err, keystore.ErrNotFound) {
			return KeyInfo{}, fmt.Errorf("destroy CA key %s: %w", r.ID, err)
		}
		delete(m.own, r.ID)
	}
	m.cfg.Logger.Warn("CA key revoked", logkey.KeyID, r.ID, "kind", string(kind), "owner", r.ServerID, "forced", opts.Force)
	m.poke()
	return info, nil
}

// unpublish removes the authorities of records from the bundle.
func (m *Manager) unpublish(ctx context.Context, records []*datastore.CAKey) error {
	_, err := m.cfg.Store.UpdateBundle(ctx, m.cfg.TrustDomain, func(old *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
		if old == nil {
			return nil, fmt.Errorf("%w: no bundle", datastore.ErrNotFound)
		}
		b := old.Clone()
		for _, r := range records {
			switch r.Kind {
			case datastore.CAKeyX509:
				if cert, chain, err := parseCAChain(r.CertDER); err == nil && len(chain) == 0 {
					b.RemoveX509Authority(cert)
				}
			case datastore.CAKeyJWT:
				b.RemoveJWTAuthority(r.ID)
			}
		}
		if old.Equal(b) {
			return old, nil
		}
		seq, _ := old.SequenceNumber()
		b.SetSequenceNumber(seq + 1)
		return b, nil
	})
	if err != nil {
		return fmt.Errorf("remove from bundle: %w", err)
	}
	return nil
}

// announce raises the bundle's sequence number, so that every server and
// agent sees a change of the CA's state that leaves the bundle's keys as
// they are (a taint).
func (m *Manager) announce(ctx context.Context) error {
	_, err := m.cfg.Store.UpdateBundle(ctx, m.cfg.TrustDomain, func(old *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
		if old == nil {
			return nil, fmt.Errorf("%w: no bundle", datastore.ErrNotFound)
		}
		b := old.Clone()
		seq, _ := old.SequenceNumber()
		b.SetSequenceNumber(seq + 1)
		return b, nil
	})
	if err != nil {
		return fmt.Errorf("announce CA change in the bundle: %w", err)
	}
	return nil
}

// poke asks Run to evaluate the policy again.
func (m *Manager) poke() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// ReplaceUpstreamTainted replaces this server's X.509 CAs that an
// upstream authority the upstream has tainted signed: tainted holds the
// tainted authorities' subject key IDs (lowercase hex), as a parent Writ
// deployment announces them. If the active CA, or a prepared one, chains
// through one of them, a new CA is prepared (the Authority signs it with
// an untainted key) and activated at once, and every such CA of this
// server is then tainted, so that agents re-sign what it signed. It
// returns the operator IDs of the CAs it tainted.
func (m *Manager) ReplaceUpstreamTainted(ctx context.Context, tainted []string) ([]string, error) {
	if len(tainted) == 0 {
		return nil, nil
	}
	affected, err := m.upstreamTainted(ctx, tainted)
	if err != nil || len(affected) == 0 {
		return nil, err
	}
	var done []string
	// A prepared CA that is affected would be activated by the rotation:
	// taint it first (this server holds it).
	for _, r := range affected {
		if r.State == datastore.CAKeyPrepared {
			id, _ := DisplayID(r)
			if _, err := m.Taint(ctx, datastore.CAKeyX509, id); err != nil {
				return done, err
			}
			done = append(done, id)
		}
	}
	if slices.ContainsFunc(affected, func(r *datastore.CAKey) bool { return r.State == datastore.CAKeyActive }) {
		if err := m.rotateX509(ctx); err != nil {
			return done, err
		}
	}
	for _, r := range affected {
		if r.State == datastore.CAKeyPrepared {
			continue
		}
		id, _ := DisplayID(r)
		if _, err := m.Taint(ctx, datastore.CAKeyX509, id); err != nil {
			return done, err
		}
		done = append(done, id)
	}
	m.cfg.Logger.Warn("CA keys signed by a tainted upstream authority replaced and tainted", "keys", done)
	return done, nil
}

// upstreamTainted returns this server's unexpired X.509 CA records, not
// yet tainted, whose chain holds a certificate issued by one of tainted.
func (m *Manager) upstreamTainted(ctx context.Context, tainted []string) ([]*datastore.CAKey, error) {
	records, err := m.cfg.Store.ListCAKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list CA keys: %w", err)
	}
	now := m.cfg.Clock.Now()
	var out []*datastore.CAKey
	for _, r := range records {
		if r.ServerID != m.cfg.ServerID || r.Kind != datastore.CAKeyX509 || r.State == datastore.CAKeyTainted || expired(now, r) {
			continue
		}
		certs, err := x509.ParseCertificates(r.CertDER)
		if err != nil {
			continue
		}
		if slices.ContainsFunc(certs, func(c *x509.Certificate) bool {
			return len(c.AuthorityKeyId) > 0 && slices.Contains(tainted, hex.EncodeToString(c.AuthorityKeyId))
		}) {
			out = append(out, r)
		}
	}
	return out, nil
}

// rotateX509 makes a new X.509 CA active at once: the prepared one if
// this server has one, otherwise a new one.
func (m *Manager) rotateX509(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.cfg.Clock.Now()
	records, err := m.cfg.Store.ListCAKeys(ctx)
	if err != nil {
		return fmt.Errorf("list CA keys: %w", err)
	}
	if err := m.reconcile(ctx, records); err != nil {
		return err
	}
	p := newest(now, m.cfg.ServerID, records, datastore.CAKeyX509, datastore.CAKeyPrepared)
	if p == nil {
		if p, err = m.prepare(ctx, now, datastore.CAKeyX509, records); err != nil {
			return err
		}
		records = append(records, p)
	}
	return m.activate(ctx, now, records, p, true)
}
