// Package server runs a Writ CA server: it locks the data directory,
// checks that the state in it is whole, opens the datastore, loads or
// creates the CA keys, and serves the admin API (with the gRPC health
// service) on the admin Unix socket until its context ends; with
// Config.AdminBindAddress, the same services also over mutual TLS to
// callers with an admin X.509-SVID (ca/admin's remote listener), the
// server presenting the node API's certificate.
//
//	s, err := server.New(server.Config{TrustDomain: td, DataDir: dir})
//	if err != nil { ... }
//	err = s.Run(ctx) // returns after a clean shutdown
//
// A data directory holds writ.lock, datastore.db (bbolt), keys/ (the CA
// private keys) and, by default, admin.sock. Start-up refuses a directory
// whose state is partly missing or corrupt, with a message that names what
// is wrong; it never initializes over existing state.
package server
