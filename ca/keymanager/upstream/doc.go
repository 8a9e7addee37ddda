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
package upstream
