package admin_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
)

func TestGetBundle(t *testing.T) {
	e := newEnv(t, envOptions{})
	if _, err := e.bundles.GetBundle(ctxT(t), &adminv1.GetBundleRequest{}); status.Code(err) != codes.NotFound {
		t.Fatalf("GetBundle with none: %v, want NotFound", err)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// Another trust domain's bundle must not be returned.
	other := spiffeid.RequireTrustDomainFromString("other.org")
	for _, d := range []spiffeid.TrustDomain{other, td} {
		_, err := e.store.UpdateBundle(ctxT(t), d, func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
			b := spiffebundle.New(d)
			if err := b.AddJWTAuthority("kid-"+d.Name(), key.Public()); err != nil {
				return nil, err
			}
			b.SetSequenceNumber(7)
			return b, nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	resp, err := e.bundles.GetBundle(ctxT(t), &adminv1.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetTrustDomain() != td.Name() || resp.GetSequence() != 7 {
		t.Errorf("GetBundle = %q seq %d, want %q seq 7", resp.GetTrustDomain(), resp.GetSequence(), td.Name())
	}
	b, err := spiffebundle.Parse(td, resp.GetSpiffeBundle())
	if err != nil {
		t.Fatalf("parse returned bundle: %v", err)
	}
	if seq, ok := b.SequenceNumber(); !ok || seq != 7 {
		t.Errorf("bundle sequence %d, %v; want 7", seq, ok)
	}
	if !b.HasJWTAuthority("kid-example.org") || b.HasJWTAuthority("kid-other.org") {
		t.Errorf("bundle has JWT authorities %v, want only kid-example.org", b.JWTAuthorities())
	}
}
