// Package datastore defines what the CA server keeps: registration
// entries, attested agents, join tokens, trust bundles and CA key
// metadata, with an ordered log of changes so that the server learns of
// every change without polling.
//
// Store is implemented by boltstore (embedded, the default) and, for
// several servers sharing state, by a PostgreSQL backend. Every backend
// must pass the conformance suite in datastoretest.
//
// The interface speaks only domain types: no protobuf, no gRPC status.
// Conditions callers branch on are the exported sentinel errors, matched
// with errors.Is.
package datastore
