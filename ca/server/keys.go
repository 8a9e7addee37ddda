package server

import (
	"context"

	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/ca/keymanager/keystore"
	"writ.dev/writ/internal/datadir"
)

// newKeyManager starts the key manager of the server whose data directory
// is dir: it owns the CA keys recorded under the server's ID and keeps
// their private keys as files in the keys directory.
func newKeyManager(ctx context.Context, dir *datadir.Dir, cfg Config, store keymanager.Store) (*keymanager.Manager, error) {
	id, err := LoadOrCreateServerID(dir.Path())
	if err != nil {
		return nil, err
	}
	ks, err := keystore.NewDisk(dir.Join(KeysDir))
	if err != nil {
		return nil, err
	}
	return keymanager.New(ctx, keymanager.Config{
		ServerID:    id,
		KeyStore:    ks,
		TrustDomain: cfg.TrustDomain,
		KeyType:     cfg.CAKeyType,
		CATTL:       cfg.CATTL,
		Store:       store,
		Clock:       cfg.Clock,
		Logger:      cfg.Logger,
	})
}
