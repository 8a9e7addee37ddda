//go:build cgo

package pkcs11store

import (
	"context"
	"crypto"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"

	"github.com/ThalesGroup/crypto11"
	"go.step.sm/crypto/kms/apiv1"
	steppkcs11 "go.step.sm/crypto/kms/pkcs11"

	"writ.dev/writ/ca/keymanager/keystore"
	"writ.dev/writ/ca/x509ca"
)

// Store is a key store in a PKCS#11 token.
type Store struct {
	kms *steppkcs11.PKCS11
	p11 *crypto11.Context
	// mu serialises Generate and Delete, which look a key up and then act.
	mu        sync.Mutex
	closeOnce sync.Once
	closeErr  error
}

// Open loads the module and logs in to the token labelled cfg.TokenLabel.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	u := "pkcs11:module-path=" + url.PathEscape(cfg.Module) + ";token=" + url.PathEscape(cfg.TokenLabel)
	kms, err := steppkcs11.New(ctx, apiv1.Options{Type: apiv1.PKCS11, URI: u, Pin: cfg.PIN})
	if err != nil {
		return nil, fmt.Errorf("%w: token %q of %s: %w", ErrToken, cfg.TokenLabel, cfg.Module, err)
	}
	p11, err := crypto11.Configure(&crypto11.Config{Path: cfg.Module, TokenLabel: cfg.TokenLabel, Pin: cfg.PIN})
	if err != nil {
		kms.Close()
		return nil, fmt.Errorf("%w: token %q of %s: %w", ErrToken, cfg.TokenLabel, cfg.Module, err)
	}
	return &Store{kms: kms, p11: p11}, nil
}

// Close logs out and unloads the module once no other user of it in this
// process remains. It is idempotent.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closeErr = errors.Join(s.p11.Close(), s.kms.Close())
	})
	return s.closeErr
}

// label returns the CKA_LABEL and CKA_ID of the key id.
func label(id string) (lbl, ckaID []byte, err error) {
	if !keystore.ValidID(id) {
		return nil, nil, fmt.Errorf("%w: %q", keystore.ErrInvalidID, id)
	}
	ckaID, err = hex.DecodeString(id)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %q", keystore.ErrInvalidID, id)
	}
	return []byte(labelPrefix + id), ckaID, nil
}

// keyURI names the key id for the KMS.
func keyURI(id string, ckaID []byte) string {
	var b strings.Builder
	b.WriteString("pkcs11:id=")
	for _, c := range ckaID {
		fmt.Fprintf(&b, "%%%02x", c)
	}
	b.WriteString(";object=" + labelPrefix + id)
	return b.String()
}

// exists reports whether the token holds the key pair id.
func (s *Store) exists(lbl, ckaID []byte) (bool, error) {
	ks, err := s.p11.FindKeyPairs(ckaID, lbl)
	if err != nil {
		return false, fmt.Errorf("%w: find key: %w", ErrToken, err)
	}
	return len(ks) > 0, nil
}

// Generate makes a key pair of keyType in the token and returns its
// signer. The private key never leaves the token.
func (s *Store) Generate(_ context.Context, id, keyType string) (crypto.Signer, error) {
	lbl, ckaID, err := label(id)
	if err != nil {
		return nil, err
	}
	req := &apiv1.CreateKeyRequest{Name: keyURI(id, ckaID)}
	kt, err := x509ca.ParseKeyType(keyType)
	if err != nil {
		return nil, err
	}
	switch kt {
	case x509ca.KeyTypeECP256:
		req.SignatureAlgorithm = apiv1.ECDSAWithSHA256
	case x509ca.KeyTypeECP384:
		req.SignatureAlgorithm = apiv1.ECDSAWithSHA384
	case x509ca.KeyTypeRSA2048:
		req.SignatureAlgorithm, req.Bits = apiv1.SHA256WithRSA, 2048
	default:
		return nil, fmt.Errorf("%w: %s is not supported in a PKCS#11 token", x509ca.ErrKeyType, kt)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ok, err := s.exists(lbl, ckaID); err != nil {
		return nil, err
	} else if ok {
		return nil, fmt.Errorf("%w: %s", keystore.ErrExists, id)
	}
	resp, err := s.kms.CreateKey(req)
	if err != nil {
		return nil, fmt.Errorf("%w: generate key %s: %w", ErrToken, id, err)
	}
	signer, err := s.kms.CreateSigner(&resp.CreateSignerRequest)
	if err != nil {
		return nil, fmt.Errorf("%w: key %s: %w", ErrToken, id, err)
	}
	return signer, nil
}

// Load returns the signer of the key id.
func (s *Store) Load(_ context.Context, id string) (crypto.Signer, error) {
	lbl, ckaID, err := label(id)
	if err != nil {
		return nil, err
	}
	if ok, err := s.exists(lbl, ckaID); err != nil {
		return nil, err
	} else if !ok {
		return nil, fmt.Errorf("%w: %s is not in the token", keystore.ErrNotFound, id)
	}
	signer, err := s.kms.CreateSigner(&apiv1.CreateSignerRequest{SigningKey: keyURI(id, ckaID)})
	if err != nil {
		return nil, fmt.Errorf("%w: key %s: %w", ErrToken, id, err)
	}
	if err := x509ca.CheckPublicKey(signer.Public()); err != nil {
		return nil, fmt.Errorf("%w: key %s: %w", keystore.ErrCorrupt, id, err)
	}
	return signer, nil
}

// Delete destroys the key pair id in the token.
func (s *Store) Delete(_ context.Context, id string) error {
	lbl, ckaID, err := label(id)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ok, err := s.exists(lbl, ckaID); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("%w: %s", keystore.ErrNotFound, id)
	}
	if err := s.kms.DeleteKey(keyURI(id, ckaID)); err != nil {
		return fmt.Errorf("%w: delete key %s: %w", ErrToken, id, err)
	}
	return nil
}

// List returns the IDs of the Writ keys in the token, sorted.
func (s *Store) List(context.Context) ([]string, error) {
	keys, err := s.p11.FindAllKeyPairs()
	if err != nil {
		return nil, fmt.Errorf("%w: list keys: %w", ErrToken, err)
	}
	var ids []string
	for _, k := range keys {
		a, err := s.p11.GetAttribute(k, crypto11.CkaLabel)
		if err != nil || a == nil {
			continue
		}
		id, ok := strings.CutPrefix(string(a.Value), labelPrefix)
		if ok && keystore.ValidID(id) && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids, nil
}
