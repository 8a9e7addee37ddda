package admin_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"writ.dev/writ/ca/admin"
	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/ca/keymanager/keystore"

	"writ.dev/writ/internal/logkey"
)

// newCAEnv is an admin API server whose CAService is backed by a real
// key manager on the same store and clock.
func newCAEnv(t *testing.T) (*env, adminv1.CAServiceClient, *keymanager.Manager) {
	t.Helper()
	return newCAEnvStore(t, nil)
}

// failingKeyStore fails ListCAKeys once fail is set.
type failingKeyStore struct {
	keymanager.Store
	fail *atomic.Bool
}

func (s failingKeyStore) ListCAKeys(ctx context.Context) ([]*datastore.CAKey, error) {
	if s.fail.Load() {
		return nil, errors.New("disk on fire at /var/lib/writ")
	}
	return s.Store.ListCAKeys(ctx)
}

func newCAEnvStore(t *testing.T, fail *atomic.Bool) (*env, adminv1.CAServiceClient, *keymanager.Manager) {
	t.Helper()
	var km *keymanager.Manager
	dir := t.TempDir()
	e := newEnv(t, envOptions{cfg: func(cfg *admin.Config) {
		store := cfg.Store.(keymanager.Store)
		if fail != nil {
			store = failingKeyStore{Store: store, fail: fail}
		}
		ks, err := keystore.NewDisk(filepath.Join(dir, "keys"))
		if err != nil {
			t.Fatal(err)
		}
		km, err = keymanager.New(context.Background(), keymanager.Config{
			ServerID: "server-a", KeyStore: ks, TrustDomain: td, KeyType: "ec-p256",
			CATTL: 24 * time.Hour, Store: store, Clock: cfg.Clock,
		})
		if err != nil {
			t.Fatal(err)
		}
		cfg.CA = km
		cfg.DefaultX509SVIDTTL = time.Hour
	}})
	return e, adminv1.NewCAServiceClient(e.conn), km
}

func wantStatus(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: %v, want %s", what, err, code)
	}
}

func list(t *testing.T, ca adminv1.CAServiceClient, kind string) map[string]*adminv1.Authority {
	t.Helper()
	resp, err := ca.ListAuthorities(ctxT(t), &adminv1.ListAuthoritiesRequest{Kind: kind})
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]*adminv1.Authority)
	for _, a := range resp.GetAuthorities() {
		out[a.GetId()] = a
	}
	return out
}

func TestCAService(t *testing.T) {
	e, ca, km := newCAEnv(t)
	ctx := ctxT(t)
	clk := e.clock

	all := list(t, ca, "")
	x509s := list(t, ca, "x509")
	if len(all) != 2 || len(x509s) != 1 {
		t.Fatalf("listed %d authorities, %d X.509, want 2 and 1", len(all), len(x509s))
	}
	var old *adminv1.Authority
	for _, a := range x509s {
		old = a
	}
	if old.GetState() != admin.StateActive || old.GetServerId() != "server-a" || old.GetKind() != "x509" || old.GetNotAfter() <= old.GetNotBefore() {
		t.Fatalf("X.509 authority = %v", old)
	}
	_, err := ca.ListAuthorities(ctx, &adminv1.ListAuthoritiesRequest{Kind: "pgp"})
	wantStatus(t, "list of a bad kind", err, codes.InvalidArgument)

	p, err := ca.PrepareAuthority(ctx, &adminv1.PrepareAuthorityRequest{Kind: "x509"})
	if err != nil {
		t.Fatal(err)
	}
	if p.GetState() != admin.StatePrepared {
		t.Fatalf("prepared: %v", p)
	}
	checkCAAudit(t, e, adminv1.CAService_PrepareAuthority_FullMethodName, codes.OK, p.GetId())

	_, err = ca.ActivateAuthority(ctx, &adminv1.ActivateAuthorityRequest{Kind: "x509", Id: p.GetId()})
	wantStatus(t, "activate too early", err, codes.FailedPrecondition)
	checkCAAudit(t, e, adminv1.CAService_ActivateAuthority_FullMethodName, codes.FailedPrecondition, p.GetId())
	_, err = ca.ActivateAuthority(ctx, &adminv1.ActivateAuthorityRequest{Kind: "x509", Id: "0123abcd"})
	wantStatus(t, "activate unknown", err, codes.NotFound)
	_, err = ca.ActivateAuthority(ctx, &adminv1.ActivateAuthorityRequest{Kind: "x509", Id: "XYZ\n"})
	wantStatus(t, "activate a malformed ID", err, codes.InvalidArgument)

	clk.Advance(keymanager.DefaultRefreshHint + 2*time.Second)
	e.logs.reset()
	a, err := ca.ActivateAuthority(ctx, &adminv1.ActivateAuthorityRequest{Kind: "x509", Id: p.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	if a.GetState() != admin.StateActive || km.Active().X509.Cert.NotBefore.Unix() != a.GetNotBefore() {
		t.Fatalf("activated: %v", a)
	}
	checkCAAudit(t, e, adminv1.CAService_ActivateAuthority_FullMethodName, codes.OK, p.GetId())
	if got := list(t, ca, "x509")[old.GetId()]; got.GetState() != admin.StateOld || got.GetSignedUntil() != clk.Now().Unix() {
		t.Fatalf("old key after activation: %v", got)
	}

	_, err = ca.TaintAuthority(ctx, &adminv1.TaintAuthorityRequest{Kind: "x509", Id: p.GetId()})
	wantStatus(t, "taint the active key", err, codes.FailedPrecondition)
	_, err = ca.RevokeAuthority(ctx, &adminv1.RevokeAuthorityRequest{Kind: "x509", Id: old.GetId(), Force: true})
	wantStatus(t, "revoke an untainted key", err, codes.FailedPrecondition)
	_, err = ca.TaintAuthority(ctx, &adminv1.TaintAuthorityRequest{Kind: "x509", Id: "ffff"})
	wantStatus(t, "taint unknown", err, codes.NotFound)

	e.logs.reset()
	tn, err := ca.TaintAuthority(ctx, &adminv1.TaintAuthorityRequest{Kind: "x509", Id: old.GetId()})
	if err != nil || tn.GetState() != admin.StateTainted {
		t.Fatalf("taint: %v, %v", tn, err)
	}
	checkCAAudit(t, e, adminv1.CAService_TaintAuthority_FullMethodName, codes.OK, old.GetId())

	_, err = ca.RevokeAuthority(ctx, &adminv1.RevokeAuthorityRequest{Kind: "x509", Id: old.GetId()})
	wantStatus(t, "revoke too early", err, codes.FailedPrecondition)
	// The default X.509-SVID TTL after it stopped signing, it may go.
	clk.Advance(time.Hour)
	e.logs.reset()
	if _, err := ca.RevokeAuthority(ctx, &adminv1.RevokeAuthorityRequest{Kind: "x509", Id: old.GetId()}); err != nil {
		t.Fatal(err)
	}
	checkCAAudit(t, e, adminv1.CAService_RevokeAuthority_FullMethodName, codes.OK, old.GetId())
	if _, ok := list(t, ca, "x509")[old.GetId()]; ok {
		t.Fatal("revoked key still listed")
	}
	_, err = ca.RevokeAuthority(ctx, &adminv1.RevokeAuthorityRequest{Kind: "x509", Id: old.GetId(), Force: true})
	wantStatus(t, "revoke again", err, codes.NotFound)

	e.logs.reset()
	r, err := ca.Rotate(ctx, &adminv1.RotateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.GetActivated()) != 2 || r.GetActivated()[0].GetKind() != "x509" || r.GetActivated()[1].GetKind() != "jwt" {
		t.Fatalf("rotate: %v", r)
	}
	if len(e.logs.audit(adminv1.CAService_Rotate_FullMethodName)) != 1 {
		t.Fatal("rotate not audited")
	}
	_, err = ca.Rotate(ctx, &adminv1.RotateRequest{Wait: true})
	wantStatus(t, "rotate --wait without a node API", err, codes.Unavailable)
}

func checkCAAudit(t *testing.T, e *env, method string, code codes.Code, keyID string) {
	t.Helper()
	rec := e.oneAudit(t, method)
	checkAudit(t, rec, method, code, "", "")
	if got := attrString(rec.attrs, logkey.KeyID); got != keyID {
		t.Errorf("audit key_id = %q, want %q", got, keyID)
	}
	e.logs.reset()
}

// Without a key manager the CA service is unavailable, not silent.
func TestCAServiceWithoutKeyManager(t *testing.T) {
	e := newEnv(t, envOptions{})
	_, err := adminv1.NewCAServiceClient(e.conn).ListAuthorities(ctxT(t), &adminv1.ListAuthoritiesRequest{})
	wantStatus(t, "list", err, codes.Unavailable)
}

// A datastore failure under the key manager is Internal, with the detail
// only in the log.
func TestCAServiceStoreFailure(t *testing.T) {
	var fail atomic.Bool
	e, ca, _ := newCAEnvStore(t, &fail)
	fail.Store(true)
	_, err := ca.TaintAuthority(ctxT(t), &adminv1.TaintAuthorityRequest{Kind: "jwt", Id: "ab"})
	if status.Code(err) != codes.Internal || status.Convert(err).Message() != "internal error" {
		t.Fatalf("%v, want Internal \"internal error\"", err)
	}
	var logged bool
	for _, rec := range e.logs.all() {
		logged = logged || strings.Contains(rec.text, "disk on fire")
	}
	if !logged {
		t.Error("store failure not logged")
	}
}
