// Package upstream holds the upstream authorities of the key manager: CAs
// outside Writ that sign each of the server's X.509 CA certificates, so
// that Writ's CA chains under an existing PKI.
//
// Disk is an upstream CA whose certificate and key are files:
//
//	up, err := upstream.LoadDisk(upstream.Files{
//		Cert:   "upstream.pem", // the upstream CA, then its intermediates
//		Key:    "upstream.key", // PKCS#8, SEC 1 or PKCS#1 PEM, no group or other access
//		Bundle: "roots.pem",    // optional: the upstream root(s)
//	})
//	err = up.Check(now, td)     // before first use
//	cfg.Authority = up          // keymanager.Config
//
// The upstream root(s) come from Bundle, or are the last certificate of
// Cert when it is self-signed. Check refuses, with an error naming the
// problem, an upstream that cannot sign a Writ CA whose SVIDs verify: a
// certificate that is not a signing CA, a chain that does not lead to the
// roots, a path length constraint that leaves no room for Writ's CA and
// its leaves, a SPIFFE ID of another trust domain, a certificate not
// valid now, or a key that does not match. Each Writ CA certificate is
// valid no longer than any certificate above it.
//
// Caveats: the upstream key is held in this process's memory while it
// runs. When the upstream certificate expires, rotation fails (and is
// logged) until it is replaced and the server restarted.
//
// Step and CFSSL are remote upstreams, reached over HTTP with clients of
// Writ's own (no step-ca or cfssl code is linked):
//
//	step, err := upstream.NewStep(upstream.StepConfig{
//		URL: "https://ca.example.org:9000", Root: root,
//		Provisioner: "writ", Password: password, // a JWK provisioner
//	})
//	cfssl, err := upstream.NewCFSSL(upstream.CFSSLConfig{
//		URL: "http://cfssl.internal:8888", AuthKey: hexKey, Roots: roots,
//	})
//
// For each CA key, Step decrypts the JWK provisioner's key with the
// password, signs a one-time token and posts a CSR to step-ca's
// /1.0/sign; CFSSL posts the CSR to cfssl's /api/v1/cfssl/authsign with
// an HMAC-SHA256 token, and fetches cfssl's signing certificate from
// /api/v1/cfssl/info when a root did not sign directly. Every answer is
// verified as for Disk (a signing CA for the key asked about, a chain to
// the given roots with room in every path length, no other trust domain's
// SPIFFE ID, valid now and not outliving the chain) before use; failures
// wrap ErrUnavailable (worth retrying), ErrRejected, ErrBadAnswer,
// ErrConfig or one of the chain errors. Retrying is the key manager's:
// it keeps signing with the current CA meanwhile.
//
// Writ is a parent Writ deployment of the same trust domain, reached
// through its agent's socket (the server is a workload there, with a
// downstream entry):
//
//	w, err := upstream.NewWrit(upstream.WritConfig{SocketPath: "/run/writ-parent/api.sock", TrustDomain: td})
//	cfg.Authority = w             // keymanager.Config; w is also a keymanager.JWTPublisher
//	go w.Follow(ctx, store, nil)  // the local bundle follows the parent's
//
// MintCA sends a CSR to the agent's DownstreamService.MintX509CA and
// checks the answer as for the remote upstreams (the parent's X.509
// authorities are the roots); PublishJWTKey publishes each new JWT key
// in the parent's bundle; Follow reads the parent's bundle stream
// (WatchBundle) and makes the local bundle's X.509 authorities the
// parent's and its JWT keys the parent's plus the local ones
// (ApplyParentBundle), reconnecting with backoff, and reports the
// parent's tainted authorities so that CAs they signed are replaced.
package upstream
