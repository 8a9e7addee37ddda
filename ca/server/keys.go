package server

import (
	"context"
	"fmt"

	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/ca/keymanager/keystore"
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

// KeysConfig chooses where the server's CA keys live.
type KeysConfig struct {
	// KeyManager is KeyManagerDisk (if empty) or KeyManagerMemory.
	KeyManager string
}

// check validates c without I/O.
func (c KeysConfig) check() error {
	switch c.KeyManager {
	case "", KeyManagerDisk, KeyManagerMemory:
	default:
		return fmt.Errorf("unknown key manager %q (use %s or %s)", c.KeyManager, KeyManagerDisk, KeyManagerMemory)
	}
	return nil
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
	return keymanager.New(ctx, keymanager.Config{
		ServerID:    id,
		KeyStore:    ks,
		Volatile:    volatile,
		TrustDomain: cfg.TrustDomain,
		KeyType:     cfg.CAKeyType,
		CATTL:       cfg.CATTL,
		Store:       store,
		Clock:       cfg.Clock,
		Logger:      cfg.Logger,
	})
}
