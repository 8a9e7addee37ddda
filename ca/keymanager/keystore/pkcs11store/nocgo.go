//go:build !cgo

package pkcs11store

import (
	"context"
	"crypto"
)

// Store is a key store in a PKCS#11 token; this build cannot open one.
type Store struct{}

// Open returns ErrUnsupported: this build has no cgo.
func Open(context.Context, Config) (*Store, error) { return nil, ErrUnsupported }

// Close does nothing.
func (*Store) Close() error { return nil }

// Generate returns ErrUnsupported.
func (*Store) Generate(context.Context, string, string) (crypto.Signer, error) {
	return nil, ErrUnsupported
}

// Load returns ErrUnsupported.
func (*Store) Load(context.Context, string) (crypto.Signer, error) { return nil, ErrUnsupported }

// Delete returns ErrUnsupported.
func (*Store) Delete(context.Context, string) error { return ErrUnsupported }

// List returns ErrUnsupported.
func (*Store) List(context.Context) ([]string, error) { return nil, ErrUnsupported }
