package server

import (
	"context"
	"errors"
	"fmt"

	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/ca/keymanager/keystore"
	"writ.dev/writ/ca/keymanager/upstream"
	"writ.dev/writ/internal/datadir"
)

// Key managers: where the server keeps its CA private keys.
const (
	// KeyManagerDisk keeps keys as files in the keys directory of the data
	// directory. The default.
	KeyManagerDisk = "disk"
	// KeyManagerMemory keeps keys in the process only. A restart makes a
	// new CA; the old CA's certificates and JWT keys stay in the bundle
	// until they expire.
	KeyManagerMemory = "memory"
)

// UpstreamDisk is the upstream authority whose CA certificate and key are
// files (KeysConfig.UpstreamCert, UpstreamKey, UpstreamBundle).
const UpstreamDisk = "disk"

// KeysConfig chooses where the server's CA keys live.
type KeysConfig struct {
	// KeyManager is KeyManagerDisk (if empty) or KeyManagerMemory.
	KeyManager string
	// UpstreamAuthority is empty (the server's CA is self-signed) or
	// UpstreamDisk: each CA certificate is signed by the CA in
	// UpstreamCert (then its intermediates, PEM) with UpstreamKey, and the
	// upstream roots (UpstreamBundle, or UpstreamCert's last certificate
	// if self-signed) are the trust anchors.
	UpstreamAuthority string
	UpstreamCert      string
	UpstreamKey       string
	UpstreamBundle    string
}

// check validates c without I/O.
func (c KeysConfig) check() error {
	switch c.KeyManager {
	case "", KeyManagerDisk, KeyManagerMemory:
	default:
		return fmt.Errorf("unknown key manager %q (use %s or %s)", c.KeyManager, KeyManagerDisk, KeyManagerMemory)
	}
	switch c.UpstreamAuthority {
	case "":
		if c.UpstreamCert != "" || c.UpstreamKey != "" || c.UpstreamBundle != "" {
			return errors.New("upstream certificate, key or bundle given without an upstream authority (use --upstream-authority disk)")
		}
	case UpstreamDisk:
		if c.UpstreamCert == "" || c.UpstreamKey == "" {
			return errors.New("the disk upstream authority needs an upstream certificate and key (--upstream-cert, --upstream-key)")
		}
	default:
		return fmt.Errorf("unknown upstream authority %q (use %s)", c.UpstreamAuthority, UpstreamDisk)
	}
	return nil
}

// newAuthority returns the Authority cfg.Keys names (nil: self-signed),
// checked at the current time.
func newAuthority(cfg Config) (keymanager.Authority, error) {
	if cfg.Keys.UpstreamAuthority != UpstreamDisk {
		return nil, nil
	}
	up, err := upstream.LoadDisk(upstream.Files{Cert: cfg.Keys.UpstreamCert, Key: cfg.Keys.UpstreamKey, Bundle: cfg.Keys.UpstreamBundle})
	if err != nil {
		return nil, err
	}
	now := cfg.Clock.Now()
	if err := up.Check(now, cfg.TrustDomain); err != nil {
		return nil, err
	}
	if left := up.NotAfter().Sub(now); left < cfg.CATTL {
		cfg.Logger.Warn("the upstream CA expires before the CA TTL; CA certificates will be shorter", "upstream_not_after", up.NotAfter(), "ca_ttl", cfg.CATTL)
	}
	cfg.Logger.Info("CA certificates are signed by the upstream authority", "upstream", UpstreamDisk, "upstream_not_after", up.NotAfter())
	return up, nil
}

// newKeyManager starts the key manager of the server whose data directory
// is dir: it owns the CA keys recorded under the server's ID and keeps
// their private keys where cfg.Keys says.
func newKeyManager(ctx context.Context, dir *datadir.Dir, cfg Config, store keymanager.Store) (*keymanager.Manager, error) {
	id, err := LoadOrCreateServerID(dir.Path())
	if err != nil {
		return nil, err
	}
	var ks keymanager.KeyStore
	volatile := false
	switch cfg.Keys.KeyManager {
	case "", KeyManagerDisk:
		if ks, err = keystore.NewDisk(dir.Join(KeysDir)); err != nil {
			return nil, err
		}
	case KeyManagerMemory:
		ks, volatile = keystore.NewMemory(), true
	default:
		return nil, cfg.Keys.check()
	}
	auth, err := newAuthority(cfg)
	if err != nil {
		return nil, fmt.Errorf("upstream authority: %w", err)
	}
	return keymanager.New(ctx, keymanager.Config{
		ServerID:    id,
		KeyStore:    ks,
		Authority:   auth,
		Volatile:    volatile,
		TrustDomain: cfg.TrustDomain,
		KeyType:     cfg.CAKeyType,
		CATTL:       cfg.CATTL,
		Store:       store,
		Clock:       cfg.Clock,
		Logger:      cfg.Logger,
	})
}
