package keystore

import (
	"context"
	"crypto"
	"fmt"
	"slices"
	"sync"

	"writ.dev/writ/ca/x509ca"
)

// Memory keeps keys in the process only; they are gone when it exits. The
// zero value is not usable; call NewMemory.
type Memory struct {
	mu   sync.Mutex // guards keys
	keys map[string]crypto.Signer
}

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory { return &Memory{keys: make(map[string]crypto.Signer)} }

// Generate makes a key of keyType and keeps it.
func (m *Memory) Generate(_ context.Context, id, keyType string) (crypto.Signer, error) {
	if !ValidID(id) {
		return nil, fmt.Errorf("%w: %q", ErrInvalidID, id)
	}
	signer, err := x509ca.GenerateKey(keyType)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.keys[id]; ok {
		return nil, fmt.Errorf("%w: %s", ErrExists, id)
	}
	m.keys[id] = signer
	return signer, nil
}

// Load returns the key with the given ID.
func (m *Memory) Load(_ context.Context, id string) (crypto.Signer, error) {
	if !ValidID(id) {
		return nil, fmt.Errorf("%w: %q", ErrInvalidID, id)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.keys[id]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return s, nil
}

// Delete forgets the key with the given ID.
func (m *Memory) Delete(_ context.Context, id string) error {
	if !ValidID(id) {
		return fmt.Errorf("%w: %q", ErrInvalidID, id)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.keys[id]; !ok {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	delete(m.keys, id)
	return nil
}

// List returns the IDs of the keys held, sorted.
func (m *Memory) List(context.Context) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ids := make([]string, 0, len(m.keys))
	for id := range m.keys {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, nil
}
