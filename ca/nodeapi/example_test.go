package nodeapi_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"

	"writ.dev/writ/ca/datastore/boltstore"
	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/ca/keymanager/keystore"
	"writ.dev/writ/ca/nodeapi"
)

// An example of serving the node API.
func Example() {
	dir, err := os.MkdirTemp("", "nodeapi-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	bs, err := boltstore.Open(filepath.Join(dir, "datastore.db"), boltstore.Options{})
	if err != nil {
		panic(err)
	}
	defer bs.Close()
	store := bs
	ctx, cancel := context.WithCancel(context.Background())
	km, err := keymanager.New(ctx, keymanager.Config{
		ServerID: "server-a", KeyStore: keystore.NewMemory(), TrustDomain: td, KeyType: "ec-p256", CATTL: 24 * time.Hour, Store: store,
	})
	if err != nil {
		panic(err)
	}

	svc, err := nodeapi.New(nodeapi.Config{TrustDomain: td, Store: store, KeyManager: km})
	if err != nil {
		panic(err)
	}
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	<-svc.Ready()

	g := grpc.NewServer(svc.ServerOptions()...)
	svc.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go func() { _ = g.Serve(lis) }()
	fmt.Println("serving the node API")

	g.Stop()
	cancel()
	fmt.Println("Run returned:", <-done)
	// Output:
	// serving the node API
	// Run returned: <nil>
}
