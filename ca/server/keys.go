package server

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/ca/keymanager/keystore"
	"writ.dev/writ/ca/keymanager/keystore/pkcs11store"
	"writ.dev/writ/ca/keymanager/upstream"
	"writ.dev/writ/ca/nodeapi"
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
	// KeyManagerPKCS11 generates and keeps keys in a PKCS#11 token
	// (KeysConfig.PKCS11Module, PKCS11TokenLabel, PKCS11PINFile); they
	// never leave it and sign there.
	KeyManagerPKCS11 = "pkcs11"
)

// Upstream authorities: who signs the server's CA certificates.
const (
	// UpstreamDisk is the upstream authority whose CA certificate and key
	// are files (KeysConfig.UpstreamCert, UpstreamKey, UpstreamBundle).
	UpstreamDisk = "disk"
	// UpstreamStep is a step-ca reached with a JWK provisioner's one-time
	// tokens (KeysConfig.Step*).
	UpstreamStep = "step"
	// UpstreamCFSSL is a cfssl server's authenticated signing endpoint
	// (KeysConfig.CFSSL*, and UpstreamBundle for its root).
	UpstreamCFSSL = "cfssl"
	// UpstreamWrit is a parent Writ deployment reached through its agent's
	// socket (KeysConfig.UpstreamSocket): this server is a workload of that
	// agent with a downstream entry, gets each CA certificate from the
	// parent, publishes its JWT keys in the parent's bundle and follows
	// the parent's bundle.
	UpstreamWrit = "writ"
)

// KeysConfig chooses where the server's CA keys live.
type KeysConfig struct {
	// KeyManager is KeyManagerDisk (if empty), KeyManagerMemory or
	// KeyManagerPKCS11.
	KeyManager string
	// PKCS11Module is the path of the PKCS#11 module, PKCS11TokenLabel
	// the token's label and PKCS11PINFile a file (no group or other
	// access) holding the user PIN. Only for KeyManagerPKCS11.
	PKCS11Module     string
	PKCS11TokenLabel string
	PKCS11PINFile    string
	// UpstreamAuthority is empty (the server's CA is self-signed) or
	// UpstreamDisk: each CA certificate is signed by the CA in
	// UpstreamCert (then its intermediates, PEM) with UpstreamKey, and the
	// upstream roots (UpstreamBundle, or UpstreamCert's last certificate
	// if self-signed) are the trust anchors.
	UpstreamAuthority string
	UpstreamCert      string
	UpstreamKey       string
	UpstreamBundle    string
	// StepCAURL, StepRoot (a PEM file), StepProvisioner and
	// StepProvisionerPasswordFile (no group or other access) configure
	// UpstreamStep.
	StepCAURL                   string
	StepRoot                    string
	StepProvisioner             string
	StepProvisionerPasswordFile string
	// CFSSLURL, CFSSLAuthKeyFile (hex digits, no group or other access)
	// and CFSSLProfile (empty: cfssl's default) configure UpstreamCFSSL,
	// whose root(s) are in UpstreamBundle.
	CFSSLURL         string
	CFSSLAuthKeyFile string
	CFSSLProfile     string
	// UpstreamSocket is the parent deployment's agent socket for
	// UpstreamWrit.
	UpstreamSocket string
}

// check validates c without I/O.
func (c KeysConfig) check() error {
	pkcs11 := c.PKCS11Module != "" || c.PKCS11TokenLabel != "" || c.PKCS11PINFile != ""
	switch c.KeyManager {
	case "", KeyManagerDisk, KeyManagerMemory:
		if pkcs11 {
			return errors.New("PKCS#11 module, token label or PIN file given without the pkcs11 key manager (use --key-manager pkcs11)")
		}
	case KeyManagerPKCS11:
		if c.PKCS11Module == "" || c.PKCS11TokenLabel == "" || c.PKCS11PINFile == "" {
			return errors.New("the pkcs11 key manager needs a module, a token label and a PIN file (--pkcs11-module, --pkcs11-token-label, --pkcs11-pin-file)")
		}
	default:
		return fmt.Errorf("unknown key manager %q (use %s, %s or %s)", c.KeyManager, KeyManagerDisk, KeyManagerMemory, KeyManagerPKCS11)
	}
	disk := c.UpstreamCert != "" || c.UpstreamKey != ""
	step := c.StepCAURL != "" || c.StepRoot != "" || c.StepProvisioner != "" || c.StepProvisionerPasswordFile != ""
	cfssl := c.CFSSLURL != "" || c.CFSSLAuthKeyFile != "" || c.CFSSLProfile != ""
	if c.UpstreamSocket != "" && c.UpstreamAuthority != UpstreamWrit {
		return errors.New("--upstream-socket is only for --upstream-authority writ")
	}
	switch c.UpstreamAuthority {
	case "":
		if disk || step || cfssl || c.UpstreamBundle != "" {
			return errors.New("upstream options given without an upstream authority (use --upstream-authority disk, step, cfssl or writ)")
		}
	case UpstreamWrit:
		if c.UpstreamSocket == "" {
			return errors.New("the writ upstream authority needs the parent agent's socket (--upstream-socket)")
		}
		if disk || step || cfssl || c.UpstreamBundle != "" {
			return errors.New("disk, step-ca or cfssl upstream options given with the writ upstream authority (its roots come from the parent)")
		}
	case UpstreamDisk:
		if c.UpstreamCert == "" || c.UpstreamKey == "" {
			return errors.New("the disk upstream authority needs an upstream certificate and key (--upstream-cert, --upstream-key)")
		}
		if step || cfssl {
			return errors.New("step-ca or cfssl options given with the disk upstream authority")
		}
	case UpstreamStep:
		if c.StepCAURL == "" || c.StepRoot == "" || c.StepProvisioner == "" || c.StepProvisionerPasswordFile == "" {
			return errors.New("the step upstream authority needs --step-ca-url, --step-root, --step-provisioner and --step-provisioner-password-file")
		}
		if disk || cfssl || c.UpstreamBundle != "" {
			return errors.New("disk or cfssl upstream options given with the step upstream authority (its root is --step-root)")
		}
	case UpstreamCFSSL:
		if c.CFSSLURL == "" || c.CFSSLAuthKeyFile == "" || c.UpstreamBundle == "" {
			return errors.New("the cfssl upstream authority needs --cfssl-url, --cfssl-auth-key-file and the upstream root(s) in --upstream-bundle")
		}
		if disk || step {
			return errors.New("disk or step-ca upstream options given with the cfssl upstream authority")
		}
	default:
		return fmt.Errorf("unknown upstream authority %q (use %s, %s, %s or %s)", c.UpstreamAuthority, UpstreamDisk, UpstreamStep, UpstreamCFSSL, UpstreamWrit)
	}
	return nil
}

// newAuthority returns the Authority cfg.Keys names (nil: self-signed),
// checked at the current time.
func newAuthority(cfg Config) (keymanager.Authority, error) {
	switch cfg.Keys.UpstreamAuthority {
	case UpstreamStep:
		cfg.Logger.Info("CA certificates are signed by the upstream authority", "upstream", UpstreamStep, "url", cfg.Keys.StepCAURL, "provisioner", cfg.Keys.StepProvisioner)
		return newStep(cfg.Keys)
	case UpstreamCFSSL:
		cfg.Logger.Info("CA certificates are signed by the upstream authority", "upstream", UpstreamCFSSL, "url", cfg.Keys.CFSSLURL, "profile", cfg.Keys.CFSSLProfile)
		return newCFSSL(cfg.Keys)
	case UpstreamWrit:
		cfg.Logger.Info("CA certificates are signed by the parent Writ deployment", "upstream", UpstreamWrit, "socket_path", cfg.Keys.UpstreamSocket)
		return upstream.NewWrit(upstream.WritConfig{SocketPath: cfg.Keys.UpstreamSocket, TrustDomain: cfg.TrustDomain, Clock: cfg.Clock, Logger: cfg.Logger.With("component", "upstream")})
	case UpstreamDisk:
	default:
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
// their private keys where cfg.Keys says. The returned function releases
// the key store (and the upstream) once nothing signs any more; follow,
// when not nil, keeps the bundle following a parent Writ deployment's
// until its context ends, and parent then tells the node API which of the
// parent's X.509 authorities are tainted.
func newKeyManager(ctx context.Context, dir *datadir.Dir, cfg Config, store keymanager.Store) (km *keymanager.Manager, release func(), follow func(context.Context) error, parent nodeapi.ParentTaint, err error) {
	id, err := LoadOrCreateServerID(dir.Path())
	if err != nil {
		return nil, nil, nil, nil, err
	}
	var ks keymanager.KeyStore
	closeKeys := func() {}
	volatile := false
	switch cfg.Keys.KeyManager {
	case "", KeyManagerDisk:
		if ks, err = keystore.NewDisk(dir.Join(KeysDir)); err != nil {
			return nil, nil, nil, nil, err
		}
	case KeyManagerMemory:
		ks, volatile = keystore.NewMemory(), true
	case KeyManagerPKCS11:
		p, err := openPKCS11(ctx, cfg.Keys)
		if err != nil {
			return nil, nil, nil, nil, err
		}
		ks, closeKeys = p, func() { p.Close() }
		if err := checkTokenState(ctx, p, store); err != nil {
			closeKeys()
			return nil, nil, nil, nil, err
		}
	default:
		return nil, nil, nil, nil, cfg.Keys.check()
	}
	auth, err := newAuthority(cfg)
	if err != nil {
		closeKeys()
		return nil, nil, nil, nil, fmt.Errorf("upstream authority: %w", err)
	}
	if w, ok := auth.(*upstream.Writ); ok {
		prev := closeKeys
		closeKeys = func() {
			prev()
			w.Close()
		}
		parent = w
		follow = func(ctx context.Context) error {
			return w.Follow(ctx, store, func(ctx context.Context, ids []string) error {
				_, err := km.ReplaceUpstreamTainted(ctx, ids)
				return err
			})
		}
	}
	if auth != nil && cfg.Metrics != nil {
		c := countedAuthority{auth, cfg.Metrics}
		if p, ok := auth.(keymanager.JWTPublisher); ok {
			auth = countedPublisher{c, p}
		} else {
			auth = c
		}
	}
	km, err = keymanager.New(ctx, keymanager.Config{
		ServerID:    id,
		KeyStore:    ks,
		Authority:   auth,
		Volatile:    volatile,
		TrustDomain: cfg.TrustDomain,
		KeyType:     cfg.CAKeyType,
		CATTL:       cfg.CATTL,
		RefreshHint: cfg.BundleRefreshHint,
		Store:       store,
		Clock:       cfg.Clock,
		Logger:      cfg.Logger,
		JWTIssuer:   cfg.JWTIssuer,
	})
	if err != nil {
		closeKeys()
		return nil, nil, nil, nil, err
	}
	return km, closeKeys, follow, parent, nil
}

// openPKCS11 opens the token c names, reading the PIN from its file.
func openPKCS11(ctx context.Context, c KeysConfig) (*pkcs11store.Store, error) {
	pin, err := datadir.ReadFile(c.PKCS11PINFile)
	if err != nil {
		return nil, fmt.Errorf("PKCS#11 PIN file: %w", err)
	}
	return pkcs11store.Open(ctx, pkcs11store.Config{
		Module:     c.PKCS11Module,
		TokenLabel: c.PKCS11TokenLabel,
		PIN:        strings.TrimSpace(string(pin)),
	})
}

// checkTokenState refuses a token holding Writ keys when the datastore
// records no CA keys at all: the datastore was lost (the key manager would
// destroy the keys as orphans and start a CA no agent trusts).
func checkTokenState(ctx context.Context, ks keymanager.KeyStore, store keymanager.Store) error {
	ids, err := ks.List(ctx)
	if err != nil {
		return err
	}
	records, err := store.ListCAKeys(ctx)
	if err != nil {
		return fmt.Errorf("list CA keys: %w", err)
	}
	if len(ids) > 0 && len(records) == 0 {
		return fmt.Errorf("%w: the PKCS#11 token holds %d Writ CA keys but the datastore records none; restore the datastore from backup (to start a new CA on purpose, delete the token's writ-* keys)", keymanager.ErrInconsistent, len(ids))
	}
	return nil
}
