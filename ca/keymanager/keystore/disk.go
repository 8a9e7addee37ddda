package keystore

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/datadir"
)

// Disk keeps keys as PKCS#8 PEM files named <id>.pem, mode 0600, in a
// directory of mode 0700. It refuses to read a key file that other users
// could read or write.
type Disk struct {
	dir string
	mu  sync.Mutex // serializes Generate's exists-check and write
}

// NewDisk returns a store in dir, creating dir (0700) if it is missing.
func NewDisk(dir string) (*Disk, error) {
	if err := datadir.MkdirPrivate(dir); err != nil {
		return nil, err
	}
	return &Disk{dir: dir}, nil
}

// Dir returns the directory the key files are in.
func (d *Disk) Dir() string { return d.dir }

func (d *Disk) path(id string) (string, error) {
	if !ValidID(id) {
		return "", fmt.Errorf("%w: %q", ErrInvalidID, id)
	}
	return filepath.Join(d.dir, id+".pem"), nil
}

// Generate makes a key of keyType (see x509ca.KeyTypes), writes it durably
// and returns it.
func (d *Disk) Generate(_ context.Context, id, keyType string) (crypto.Signer, error) {
	path, err := d.path(id)
	if err != nil {
		return nil, err
	}
	signer, err := x509ca.GenerateKey(keyType)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(signer)
	if err != nil {
		return nil, fmt.Errorf("keystore: encode key: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, err := os.Lstat(path); err == nil {
		return nil, fmt.Errorf("%w: %s", ErrExists, id)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if err := datadir.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil {
		return nil, fmt.Errorf("keystore: write key %s: %w", id, err)
	}
	return signer, nil
}

// Load reads the key with the given ID.
func (d *Disk) Load(_ context.Context, id string) (crypto.Signer, error) {
	path, err := d.path(id)
	if err != nil {
		return nil, err
	}
	data, err := datadir.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: key file %s is missing", ErrNotFound, path)
	}
	if err != nil {
		return nil, fmt.Errorf("keystore: key file: %w", err)
	}
	signer, err := parseKey(data)
	if err != nil {
		return nil, fmt.Errorf("%w: key file %s: %w", ErrCorrupt, path, err)
	}
	return signer, nil
}

// Delete removes the key file and makes the removal durable.
func (d *Disk) Delete(_ context.Context, id string) error {
	path, err := d.path(id)
	if err != nil {
		return err
	}
	if err := os.Remove(path); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	} else if err != nil {
		return fmt.Errorf("keystore: remove key %s: %w", id, err)
	}
	return datadir.SyncDir(d.dir)
}

// List returns the IDs of the keys in the directory, sorted. Files whose
// names are not <id>.pem are not keys and are ignored.
func (d *Disk) List(context.Context) ([]string, error) {
	ents, err := os.ReadDir(d.dir)
	if err != nil {
		return nil, fmt.Errorf("keystore: %w", err)
	}
	var ids []string
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".pem")
		if ok && ValidID(id) && e.Type().IsRegular() {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids, nil
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
