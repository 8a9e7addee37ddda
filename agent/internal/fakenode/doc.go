// Package fakenode is a fake CA server's node API for the agent's tests
// of reconnection, backoff and outages: a real gRPC server over real TLS
// 1.3 on 127.0.0.1, with a CA, server certificate and SVIDs minted at
// runtime by ca/x509ca and JWT-SVIDs by ca/jwtsvid, all at the test's
// (fake) clock. It keeps just enough state (join tokens, agents, entries)
// to answer the agent, records every call, and can be stopped and
// restarted on the same address to simulate an outage.
//
//	srv := fakenode.Start(t, fakenode.Options{Clock: clk, TrustDomain: td})
//	token := srv.AddJoinToken()
//	srv.SetEntries(e1, e2)       // pushed to open Sync streams
//	srv.Stop(); srv.Restart()    // outage
//
// It is not a reference implementation of ca/nodeapi: it checks only what
// the agent's tests need.
package fakenode
