// Package upstream tests Writ chained under real upstream CAs: a step-ca
// (smallstep/certificates) and a cfssl server, both started in-process on
// loopback. It is its own Go module so that Writ's own module, and the
// writ binary, never depend on either.
//
// Each test builds the real writ binary, runs `writ server run
// --upstream-authority step|cfssl` against the upstream and a real agent
// that trusts only the upstream root, and checks with go-spiffe that a
// workload's X.509-SVID verifies against a bundle holding only that root.
//
// Run with `make test-upstream` (or `cd test/upstream && go test ./...`).
package upstream
