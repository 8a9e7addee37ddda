// Package authz is the service side of SPIFFE authentication: services
// import it to accept only the callers they mean to, by SPIFFE ID, over
// mutual TLS (X.509-SVIDs) or with JWT-SVID bearer tokens, using the SVIDs
// and bundles a go-spiffe source keeps current from the Workload API. No
// request or handshake calls the agent or the CA.
//
// # Policies
//
// A Policy allows SPIFFE IDs: IDs (exact IDs), TrustDomain (every
// workload of a trust domain), PathPrefix (a path and everything below it,
// segment by segment: "/ns/prod" allows /ns/prod/web, not
// /ns/production) and Any (a union). PolicyFunc adapts a function.
//
//	policy := authz.Any(
//		authz.IDs(spiffeid.RequireFromString("spiffe://example.org/web")),
//		authz.MustPathPrefix(td, "/ns/prod"),
//	)
//
// # Mutual TLS
//
//	src, err := workloadapi.NewX509Source(ctx) // go-spiffe; reads SPIFFE_ENDPOINT_SOCKET
//	srv := &http.Server{TLSConfig: authz.ServerTLSConfig(src, policy), Handler: h}
//	err = srv.ListenAndServeTLS("", "")
//	// in h: id, err := authz.PeerID(r.TLS)
//
//	client := &http.Client{Transport: &http.Transport{
//		TLSClientConfig: authz.ClientTLSConfig(src, authz.IDs(serverID)),
//	}}
//
// For gRPC, wrap the same configs in credentials.NewTLS; GRPCPeerID gives
// a handler the client's ID. ServerTLSConfigNoClientCert and
// ClientTLSConfigNoClientCert authenticate the server only, for endpoints
// whose callers present JWT-SVIDs instead.
//
// Each handshake presents the source's current SVID (rotation needs no
// restart) and verifies the peer's chain as an X.509-SVID, with writ's
// strict verifier (ca/x509ca.VerifyX509SVID), against the bundle of the
// peer ID's own trust domain only, then authorizes the ID by the policy.
// The check runs in tls.Config.VerifyConnection, which Go calls on every
// handshake, resumed sessions included; VerifyPeerCertificate, which
// go-spiffe's tlsconfig helpers use, is not called on resumed sessions, so
// a session resumed from a ticket would skip a policy or bundle change
// made since it was created. The chain a resumed session carries is the
// one verified when it was created, checked again against the bundle, the
// time and the policy of today. Session tickets stay enabled: resumption
// saves the signature operations, not the authorization. Verification
// runs once per handshake (not also in VerifyPeerCertificate).
//
// # JWT-SVIDs (HTTP and gRPC)
//
//	jwtSrc, err := workloadapi.NewJWTSource(ctx) // JWT bundles, kept current
//	a, err := authz.NewJWTAuthorizer(authz.JWTConfig{
//		Bundles:  jwtSrc,
//		Audience: []string{"spiffe://example.org/greeter"},
//		Policy:   policy,
//	})
//	http.Handle("/hello", a.Middleware(h)) // in h: id, _ := authz.CallerID(r.Context())
//	grpc.NewServer(grpc.ChainUnaryInterceptor(a.UnaryServerInterceptor()),
//		grpc.ChainStreamInterceptor(a.StreamServerInterceptor()))
//
// The token comes from "Authorization: Bearer <token>" (HTTP) or the
// "authorization" metadata (gRPC), parsed strictly by ParseBearer, and is
// validated by ca/jwtsvid.Validate at the Clock's time: allowed algorithm
// and header, key found by kid in the bundle of the subject's trust
// domain only, signature, exp, aud. The subject is then authorized by the
// policy and put in the context (CallerID). HTTP answers 401 with
// "WWW-Authenticate: Bearer" when there is no bearer token, 401 with
// error="invalid_token" when it is invalid, 403 when the policy refuses
// the caller; gRPC fails with Unauthenticated and PermissionDenied. The
// reasons given to the caller are short and fixed; the detail is logged
// at debug level, never the token.
//
// Token cache: a full validation costs about one ECDSA verification plus
// parsing, and clients reuse a JWT-SVID for half its lifetime, so a
// JWTAuthorizer remembers the tokens that validated in a jwtsvid.Verifier
// (by SHA-256 of the exact token, bounded by JWTConfig.TokenCacheSize),
// the same cache and rules as the Workload API's ValidateJWTSVID. A
// remembered token is accepted only if, now, it has not expired (exp plus
// jwtsvid.Leeway, nbf, iat) and the very key that verified it is still in the bundle of its
// subject's trust domain under the same kid: dropping a key from the
// bundle invalidates its tokens at once. Signature, header, subject and
// audience cannot change for the same bytes. The policy is applied on
// every request. Invalid tokens are never remembered, so a flood of bad
// tokens costs full validations, as without the cache.
//
// # OAuth 2.0 access tokens (HTTP and gRPC)
//
//	a, err := authz.NewAccessTokenAuthorizer(authz.AccessTokenConfig{
//		TrustDomain: td,        // the authorization server's trust domain
//		Bundles:     bundleSrc, // go-spiffe workloadapi.BundleSource
//		Audience:    []string{"https://orders.example.org"},
//		Scopes:      []string{"orders:read"},
//		Revocations: revoked, // a revocationapi.Client following the agent
//	})
//	http.Handle("/orders", a.Middleware(h)) // in h: tok, _ := authz.AccessTokenFrom(r.Context())
//
// An AccessTokenAuthorizer validates the RFC 9068 access tokens Writ's
// server issues, locally: ca/jwtsvid's validation with the access-token
// profile (allowed algorithm and header, sub in the configured
// TrustDomain, the authorization server's, and the key by kid in that
// trust domain's bundle only, never a federated one's even if the bundle
// source holds it, signature first, exp, nbf and iat with
// jwtsvid.Leeway, aud) and typ at+jwt required, so that a JWT-SVID is
// not accepted as an access token; then iss (if configured), client_id,
// jti and iat present, act well formed, the certificate binding (a cnf
// claim must hold x5t#S256 equal to the SHA-256 of the request's TLS
// client certificate: a bound token presented without that certificate
// is refused), the revocation list (by jti, or by sub or client_id
// revoked at or after iat), and last the required scopes. HTTP answers
// 401 with error="invalid_token" for any invalid token and 403 with
// error="insufficient_scope" and the scopes required for a missing
// scope (RFC 6750 §3.1); gRPC, Unauthenticated and PermissionDenied. The
// verified claims (AccessToken: sub, client_id, scopes, act...) are in
// the context. Tokens are remembered as for JWT-SVIDs; the binding and
// the revocation list are checked on every request.
//
// # Caveats
//
//   - Bearer tokens are replayable until they expire by anyone who sees
//     them: serve the JWT endpoints over TLS (ServerTLSConfigNoClientCert)
//     and choose audiences that name one service.
//   - PeerID and GRPCPeerID parse the peer certificate without verifying
//     it: they are meaningful only on connections made with this
//     package's configs.
//   - A policy sees only the SPIFFE ID; authorization by method or path
//     is the handler's.
package authz
