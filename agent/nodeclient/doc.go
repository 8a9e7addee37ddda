// Package nodeclient is the agent's client of the CA server's node API
// (ca/api/node/v1) over TLS 1.3.
//
// The server is authenticated before anything is sent: its certificate
// chain must verify (x509ca.VerifyX509SVID, at the injected clock's time)
// to the X.509 authorities the agent trusts, and its only URI SAN must be
// spiffe://<trust-domain>/writ/server. The check runs in VerifyConnection,
// so it holds on every connection, resumed or not. Only an insecure
// bootstrap Attest (Config.InsecureBootstrap) skips it.
//
// The agent's X.509-SVID is presented as the client certificate, read
// from an atomic.Pointer at each handshake: after renewing, store the new
// certificate there and open a new Client, and the server sees it.
//
//	var cert atomic.Pointer[tls.Certificate]
//	cert.Store(&agentCert)
//	c, err := nodeclient.New(nodeclient.Config{
//		Address:     "ca.example.org:8081",
//		TrustDomain: td,
//		Authorities: func() []*x509.Certificate { return bundle.X509Authorities() },
//		Certificate: &cert,
//		Clock:       clk,
//	})
//	defer c.Close()
//	stream, err := c.Sync(ctx)
//
// Calls fail fast when the server is away: unary calls have short
// deadlines (SignTimeout for signing), SignJWT and BatchSignJWT give up
// after JWTConnectTimeout if no connection is ready (BatchSignJWT asks a
// server without BatchSignJWTSVID one request at a time), and nothing
// waits for
// readiness. Errors wrap ErrUnavailable (server unreachable or too slow;
// status code Unavailable), ErrServerNotTrusted (its certificate failed
// the check above), ErrPermissionDenied (the agent is not, or no longer,
// attested: evicted, banned, unknown), ErrBusy (refused for load, status
// code ResourceExhausted with a RetryInfo detail: the server bounds the
// attestations in progress; other ResourceExhausted failures, such as a
// message over the size limit, are not ErrBusy), or ErrProtocol (a malformed answer), and keep the gRPC
// status for status.Code. A call the Client's Close cut short, or made
// after it, fails with ErrUnavailable and ErrClosed: its caller may make
// it again on another connection.
//
// Caveat: a Client is one connection's worth of state; the agent closes
// it and opens a new one to reconnect, so that its own backoff (on its
// clock) decides when.
package nodeclient
