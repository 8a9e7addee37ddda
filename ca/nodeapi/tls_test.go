package nodeapi_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"writ.dev/writ/ca/admin"
	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/ca/nodeapi"
)

// serverLeaf handshakes with the server and returns its certificate.
func (e *env) serverLeaf() *x509.Certificate {
	e.t.Helper()
	cfg := e.clientTLS(nil)
	cfg.NextProtos = []string{"h2"}
	c, err := tls.Dial("tcp", e.addr, cfg)
	if err != nil {
		e.t.Fatalf("handshake: %v", err)
	}
	defer c.Close()
	cs := c.ConnectionState()
	if cs.Version != tls.VersionTLS13 {
		e.t.Errorf("TLS version %x", cs.Version)
	}
	return cs.PeerCertificates[0]
}

func TestServerCertificate(t *testing.T) {
	e := newEnv(t, envOptions{})
	leaf := e.serverLeaf()
	id, _, err := x509svid.Verify([]*x509.Certificate{leaf}, e.bundle(), x509svid.WithTime(e.clock.Now()))
	if err != nil || id != admin.ServerID(td) {
		t.Fatalf("server certificate: %s, %v", id, err)
	}
	if len(leaf.DNSNames) != 0 || leaf.IsCA {
		t.Errorf("server certificate: DNS names %q, IsCA %v", leaf.DNSNames, leaf.IsCA)
	}
	if got := leaf.NotAfter.Sub(e.clock.Now()); got != nodeapi.DefaultX509SVIDTTL {
		t.Errorf("server certificate lives %v", got)
	}
	if err := leaf.CheckSignatureFrom(e.km.Active().X509.Cert); err != nil {
		t.Errorf("not signed by the active CA: %v", err)
	}

	// TLS 1.2 is refused.
	cfg := e.clientTLS(nil)
	cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	if c, err := tls.Dial("tcp", e.addr, cfg); err == nil {
		c.Close()
		t.Error("TLS 1.2 handshake succeeded")
	}
}

func TestServerCertRenewsAtHalfLife(t *testing.T) {
	e := newEnv(t, envOptions{})
	first := e.serverLeaf()
	// The renewer wakes at least every minute; step in minutes, each
	// time once it has re-armed its timer.
	step := func(n int) {
		for range n {
			if err := e.clock.WaitForTimers(ctxT(t), 1); err != nil {
				t.Fatal(err)
			}
			e.clock.Advance(time.Minute)
		}
	}
	step(29)
	if got := e.serverLeaf(); got.SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatalf("renewed before half its life")
	}
	step(2)
	eventually(t, "renewed after half its life", func() bool {
		return e.serverLeaf().SerialNumber.Cmp(first.SerialNumber) != 0
	})
}

func TestServerCertRenewsOnCAChange(t *testing.T) {
	e := newEnv(t, envOptions{})
	first := e.serverLeaf()
	next := foreignCA(t, e.clock.Now())
	// Publish the new CA, then make it the active one.
	if _, err := e.store.UpdateBundle(context.Background(), td, func(b *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
		b = b.Clone()
		b.AddX509Authority(next.Cert)
		return b, nil
	}); err != nil {
		t.Fatal(err)
	}
	cur := e.km.Manager.Active()
	e.km.override.Store(&keymanager.Active{X509: next, JWT: cur.JWT, JWTNotAfter: cur.JWTNotAfter})
	// The next handshake notices and asks for a renewal; it still gets
	// the old certificate.
	e.serverLeaf()
	eventually(t, "server certificate from the new CA", func() bool {
		return e.serverLeaf().CheckSignatureFrom(next.Cert) == nil
	})
	if got := e.serverLeaf(); got.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Error("same certificate")
	}
}

func TestServerCertFailedRenewalKeepsOld(t *testing.T) {
	e := newEnv(t, envOptions{})
	first := e.serverLeaf()
	e.km.none.Store(true)
	if err := e.clock.WaitForTimers(ctxT(t), 1); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(31 * time.Minute)
	eventually(t, "failure logged", func() bool {
		return len(e.logs.find("cannot sign the server's TLS certificate; keeping the current one")) > 0
	})
	if got := e.serverLeaf(); got.SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatal("certificate changed although renewal failed")
	}
	// Once the CA is back, the retry succeeds.
	e.km.none.Store(false)
	if err := e.clock.WaitForTimers(ctxT(t), 1); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(10 * time.Second)
	eventually(t, "renewed after the retry", func() bool {
		return e.serverLeaf().SerialNumber.Cmp(first.SerialNumber) != 0
	})
}
