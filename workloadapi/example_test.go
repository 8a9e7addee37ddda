package workloadapi_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"

	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/workloadapi"
	"writ.dev/writ/workloadapi/unixattest"
)

// A Workload API server on a socket, serving this process (by its uid)
// the SVID of one entry, fetched with go-spiffe's client.
func Example() {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	now := time.Now()

	// What the agent puts in the cache: an entry, its SVID and the bundle.
	caKey, _ := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	caCert, _ := x509ca.NewSelfSignedCA(now, td, caKey, time.Hour)
	cache, _ := svidcache.New(svidcache.Config{TrustDomain: td})
	sel, _ := entry.ParseSelector(fmt.Sprintf("unix:uid:%d", os.Geteuid()))
	e := &entry.Entry{
		ID:        entry.NewID(),
		SPIFFEID:  spiffeid.RequireFromPath(td, "/billing"),
		ParentID:  spiffeid.RequireFromPath(td, "/agent/node1"),
		Selectors: []entry.Selector{sel},
	}
	cache.Apply(svidcache.Update{Full: true, Entries: []*entry.Entry{e}, Bundle: spiffebundle.FromX509Authorities(td, []*x509.Certificate{caCert})})
	key, _ := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	der, _ := x509ca.SignX509SVID(now, &x509ca.Issuer{Cert: caCert, Signer: caKey}, x509ca.SVIDParams{ID: e.SPIFFEID, TTL: time.Minute, PublicKey: key.Public()})
	svid, _ := svidcache.NewX509SVID(e.ID, [][]byte{der}, key)
	if err := cache.SetX509SVID(svid); err != nil {
		fmt.Println(err)
		return
	}

	dir, _ := os.MkdirTemp("", "w")
	defer os.RemoveAll(dir)
	srv, err := workloadapi.New(workloadapi.Config{
		SocketPath:  filepath.Join(dir, "workload.sock"),
		Cache:       cache,
		Attestor:    unixattest.New(unixattest.Config{}),
		TrustDomain: td,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() { stop(); <-done }()
	select {
	case <-srv.Ready():
	case err := <-done:
		fmt.Println(err)
		return
	}

	// A workload: it dials the address SPIFFE_ENDPOINT_SOCKET would hold.
	addr, _ := workloadapi.EndpointAddr(filepath.Join(dir, "workload.sock"))
	got, err := spiffewl.FetchX509SVID(ctx, spiffewl.WithAddr(addr))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(got.ID)
	// Output: spiffe://example.org/billing
}

func ExampleEndpointAddr() {
	addr, _ := workloadapi.EndpointAddr("/run/writ/public/workload.sock")
	fmt.Println(addr)
	path, _ := workloadapi.ParseEndpointAddr(addr)
	fmt.Println(path)
	// Output:
	// unix:///run/writ/public/workload.sock
	// /run/writ/public/workload.sock
}
