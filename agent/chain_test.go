package agent_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"

	"writ.dev/writ/agent/internal/fakenode"
	"writ.dev/writ/workloadapi"
	"writ.dev/writ/workloadapi/unixattest"
)

// TestChainedSVIDsServedWhole: a server whose CA sits below an upstream
// root sends every SVID with its intermediate. The agent authenticates
// with its chained SVID (also after a restart, from its saved files) and
// its Workload API serves workloads the whole chain, which go-spiffe
// verifies against a bundle holding only the root.
func TestChainedSVIDsServedWhole(t *testing.T) {
	e := newEnv(t, fakenode.Options{UpstreamRoot: true})
	w := e.srv.Entry("/web", "unix:uid:0")
	e.srv.SetEntries(w)
	r := e.start(e.attestConfig())
	e.ready(r)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	// Restart: the saved agent SVID chain still authenticates.
	r = e.start(e.config())
	e.ready(r)
	if n := e.srv.Stats().Attests; n != 1 {
		t.Fatalf("%d attestations, want 1", n)
	}

	sock := filepath.Join(filepath.Dir(e.dir), "wl")
	wl, err := workloadapi.New(workloadapi.Config{
		SocketPath:  sock,
		Cache:       r.a.Cache(),
		Attestor:    unixattest.New(unixattest.Config{}),
		TrustDomain: e.srv.TrustDomain(),
		Clock:       e.clk,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wlDone := make(chan error, 1)
	go func() { wlDone <- wl.Run(ctx) }()
	defer func() { cancel(); <-wlDone }()
	select {
	case <-wl.Ready():
	case err := <-wlDone:
		t.Fatalf("Workload API: %v", err)
	}
	xc, err := spiffewl.FetchX509Context(ctx, spiffewl.WithAddr("unix://"+sock))
	if err != nil {
		t.Fatal(err)
	}
	if len(xc.SVIDs) != 1 {
		t.Fatalf("%d SVIDs, want 1", len(xc.SVIDs))
	}
	certs := xc.SVIDs[0].Certificates
	if len(certs) != 2 || !bytes.Equal(certs[1].Raw, e.srv.CA().Raw) {
		t.Fatalf("SVID chain of %d certificates, want the leaf and the intermediate", len(certs))
	}
	b, err := xc.Bundles.GetX509BundleForTrustDomain(e.srv.TrustDomain())
	if err != nil {
		t.Fatal(err)
	}
	if auths := b.X509Authorities(); len(auths) != 1 || !auths[0].Equal(e.srv.Root()) {
		t.Fatalf("bundle holds %d authorities, want the root only", len(auths))
	}
	rootOnly := x509bundle.FromX509Authorities(e.srv.TrustDomain(), []*x509.Certificate{e.srv.Root()})
	if _, _, err := x509svid.Verify(certs, rootOnly); err != nil {
		t.Fatalf("go-spiffe refuses the served chain: %v", err)
	}
}
