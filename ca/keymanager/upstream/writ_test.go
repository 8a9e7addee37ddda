package upstream_test

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	agentv1 "writ.dev/writ/ca/api/agent/v1"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/datastore/boltstore"
	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/ca/keymanager/upstream"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/testca"
)

var exampleTD = spiffeid.RequireTrustDomainFromString("example.org")

// parentAgent answers MintX509CA as a parent deployment's agent would,
// with the certificate sign makes and roots as the X.509 authorities.
type parentAgent struct {
	agentv1.UnimplementedDownstreamServiceServer
	roots []*x509.Certificate
	// sign makes the answered CA certificate from the CSR's key.
	sign func(pub any) (*x509.Certificate, error)
}

func (p *parentAgent) MintX509CA(_ context.Context, req *agentv1.MintX509CARequest) (*agentv1.MintX509CAResponse, error) {
	csr, err := x509.ParseCertificateRequest(req.GetCsr())
	if err != nil {
		return nil, err
	}
	cert, err := p.sign(csr.PublicKey)
	if err != nil {
		return nil, err
	}
	resp := &agentv1.MintX509CAResponse{CaChain: [][]byte{cert.Raw}}
	for _, r := range p.roots {
		resp.X509Authorities = append(resp.X509Authorities, r.Raw)
	}
	return resp, nil
}

// serveParent serves p on a Unix socket and returns a Writ upstream
// connected to it.
func serveParent(t *testing.T, p *parentAgent) *upstream.Writ {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "a.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	agentv1.RegisterDownstreamServiceServer(srv, p)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	w, err := upstream.NewWrit(upstream.WritConfig{SocketPath: sock, TrustDomain: exampleTD})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// TestWritMintCAChecksTheAnswer: what the parent's agent answers is
// verified like any upstream's answer before it is used.
func TestWritMintCAChecksTheAnswer(t *testing.T) {
	now := time.Now()
	parent := testca.New(t, exampleTD, now, 24*time.Hour)
	other := testca.New(t, spiffeid.RequireTrustDomainFromString("other.org"), now, 24*time.Hour)
	tests := []struct {
		name string
		sign func(pub any) (*x509.Certificate, error)
		want error
	}{
		{name: "a CA of the trust domain", sign: func(pub any) (*x509.Certificate, error) {
			return x509ca.SignCA(now, exampleTD, pub, parent.Issuer(), time.Hour)
		}},
		{name: "a CA for another key", sign: func(any) (*x509.Certificate, error) {
			return x509ca.SignCA(now, exampleTD, testca.NewKey(t).Public(), parent.Issuer(), time.Hour)
		}, want: upstream.ErrKeyMismatch},
		{name: "a leaf, not a CA", sign: func(pub any) (*x509.Certificate, error) {
			der, err := x509ca.SignX509SVID(now, parent.Issuer(), x509ca.SVIDParams{ID: spiffeid.RequireFromString("spiffe://example.org/x"), TTL: time.Hour, PublicKey: pub})
			if err != nil {
				return nil, err
			}
			return x509.ParseCertificate(der)
		}, want: upstream.ErrNotCA},
		{name: "signed by another trust domain's CA", sign: func(pub any) (*x509.Certificate, error) {
			return x509ca.SignCA(now, spiffeid.RequireTrustDomainFromString("other.org"), pub, other.Issuer(), time.Hour)
		}, want: upstream.ErrTrustDomain},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := serveParent(t, &parentAgent{roots: []*x509.Certificate{parent.Cert}, sign: tt.sign})
			key := testca.NewKey(t)
			ca, err := w.MintCA(context.Background(), keymanager.CARequest{TrustDomain: exampleTD, Signer: key, Now: now, TTL: time.Hour})
			if tt.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if len(ca.TrustAnchors) != 1 || !ca.TrustAnchors[0].Equal(parent.Cert) || len(ca.Chain) != 0 {
					t.Fatalf("anchors %d, chain %d", len(ca.TrustAnchors), len(ca.Chain))
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

// TestWritParentAway: a parent agent that cannot be reached is an
// upstream outage (worth retrying).
func TestWritParentAway(t *testing.T) {
	w, err := upstream.NewWrit(upstream.WritConfig{SocketPath: filepath.Join(t.TempDir(), "none.sock"), TrustDomain: exampleTD})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	_, err = w.MintCA(context.Background(), keymanager.CARequest{TrustDomain: exampleTD, Signer: testca.NewKey(t), Now: time.Now(), TTL: time.Hour})
	if !errors.Is(err, upstream.ErrUnavailable) {
		t.Fatalf("got %v, want ErrUnavailable", err)
	}
}

// TestApplyParentBundle: the local bundle's X.509 authorities become the
// parent's, and its JWT keys the parent's plus this deployment's own.
func TestApplyParentBundle(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	store, err := boltstore.Open(filepath.Join(t.TempDir(), "db"), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	oldRoot := testca.New(t, exampleTD, now, time.Hour).Cert
	newRoot := testca.New(t, exampleTD, now, time.Hour).Cert
	ownKey, parentKey, goneKey := testca.NewKey(t), testca.NewKey(t), testca.NewKey(t)
	own, err := x509.MarshalPKIXPublicKey(ownKey.Public())
	if err != nil {
		t.Fatal(err)
	}
	if err := store.PutCAKey(ctx, &datastore.CAKey{ID: "own", Kind: datastore.CAKeyJWT, State: datastore.CAKeyActive, ServerID: "s", KeyType: "ec-p256", PublicKeyDER: own, NotBefore: now, NotAfter: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.UpdateBundle(ctx, exampleTD, func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
		b := spiffebundle.New(exampleTD)
		b.AddX509Authority(oldRoot)
		for kid, k := range map[string]any{"own": ownKey.Public(), "gone": goneKey.Public()} {
			if err := b.AddJWTAuthority(kid, k); err != nil {
				return nil, err
			}
		}
		b.SetSequenceNumber(7)
		return b, nil
	}); err != nil {
		t.Fatal(err)
	}
	parent := spiffebundle.New(exampleTD)
	parent.AddX509Authority(newRoot)
	if err := parent.AddJWTAuthority("parent", parentKey.Public()); err != nil {
		t.Fatal(err)
	}
	if err := parent.AddJWTAuthority("own", ownKey.Public()); err != nil {
		t.Fatal(err)
	}

	changed, err := upstream.ApplyParentBundle(ctx, store, exampleTD, parent)
	if err != nil || !changed {
		t.Fatalf("changed %v, err %v", changed, err)
	}
	b, err := store.FetchBundle(ctx, exampleTD)
	if err != nil {
		t.Fatal(err)
	}
	if got := b.X509Authorities(); len(got) != 1 || !got[0].Equal(newRoot) {
		t.Fatalf("X.509 authorities: %d, want the parent's one", len(got))
	}
	for kid, want := range map[string]bool{"own": true, "parent": true, "gone": false} {
		if _, ok := b.FindJWTAuthority(kid); ok != want {
			t.Errorf("JWT key %s in the bundle: %v, want %v", kid, ok, want)
		}
	}
	if seq, _ := b.SequenceNumber(); seq != 8 {
		t.Fatalf("sequence %d, want 8", seq)
	}
	// The same parent bundle again changes nothing.
	if changed, err := upstream.ApplyParentBundle(ctx, store, exampleTD, parent); err != nil || changed {
		t.Fatalf("again: changed %v, err %v", changed, err)
	}
}
