// Package workloadapi serves the SPIFFE Workload API on the agent's Unix
// socket: workloads get their X.509-SVIDs, JWT-SVIDs and trust bundles
// from the agent's cache (agent/svidcache), and are identified only by the
// kernel's peer credentials of their connection (workloadapi/unixattest).
// The service is go-spiffe's generated SpiffeWorkloadAPI (method paths
// /SpiffeWorkloadAPI/...); gRPC reflection is registered beside it.
//
//	srv, err := workloadapi.New(workloadapi.Config{
//		SocketPath:  "/run/writ/public/workload.sock",
//		Cache:       cache, // *svidcache.Cache
//		Attestor:    unixattest.New(unixattest.Config{Logger: log}),
//		TrustDomain: td,
//		Logger:      log,
//	})
//	if err != nil { ... }
//	go func() { errc <- srv.Run(ctx) }() // until ctx ends
//	<-srv.Ready()                        // listening (or Run failed)
//
// Workloads dial "unix:///run/writ/public/workload.sock", the address
// EndpointAddr gives and SPIFFE_ENDPOINT_SOCKET holds.
//
// # Every call
//
//  1. The metadata must hold "workload.spiffe.io" exactly once, with
//     the value "true"; otherwise InvalidArgument, before anything else.
//     This holds for the Workload API, reflection and the services
//     registered with RegisterService (RevocationService,
//     DownstreamService); only those registered with HeaderExempt
//     (Envoy's SDS) are exempt, as their clients cannot send it.
//  2. The caller is attested. Its process was pinned once, when the
//     connection was accepted (in the gRPC transport handshake); each call
//     checks that it is still the same process, with the same uid, gid and
//     executable (Process.Check), and uses its selectors, computed on the
//     connection's first call. Any failure: PermissionDenied "no identity
//     issued", with the detail in the debug log only.
//     Services registered with RegisterService identify their callers the
//     same way, with Server.Attest.
//  3. The answer comes from memory: the cache, and responses marshaled
//     once and shared (below).
//
// # Methods
//
//   - FetchX509SVID streams the caller's X.509-SVIDs (leaf-first DER chain,
//     PKCS#8 key, the trust domain's X.509 authorities as DER, hint "") in
//     the cache's order (by SPIFFE ID, then entry ID: the first is the
//     default SVID). The first message goes at once; another follows every
//     change of what this caller sees (an SVID added, rotated, removed or
//     expired; the bundle), each with the full current set. A caller that
//     matches no entry gets PermissionDenied at once (Unavailable, which
//     clients retry, until the agent has its first entries:
//     Config.Synced). One whose entries are not signed yet gets nothing
//     until they are (go-spiffe treats a message without SVIDs as an
//     error). One that loses its last SVID (entry deleted, its SPIFFE ID
//     changed or a DNS name removed, SVID expired) gets PermissionDenied
//     and the stream ends, as SPIRE does: the SPIFFE Workload API names
//     that as redacting all SVIDs. An entry that only gains DNS names or
//     a new TTL keeps its SVID served until the new one arrives.
//   - FetchX509Bundles and FetchJWTBundles stream the local trust domain's
//     bundle and those of the foreign trust domains the caller's entries
//     federate with (entry.Entry.FederatesWith), each keyed
//     "spiffe://<trust domain>", beside each other and never merged, at
//     once and after every change of any of them: the X.509 authorities as
//     concatenated DER (a foreign bundle without any is left out of the
//     X.509 map), and a JWKS of the JWT authorities only, each with its
//     kid. FetchX509SVID's federated_bundles carries the same foreign X.509
//     authorities. With AllowVerifiersWithoutIdentity, the bundle streams
//     follow the bundles and not the caller's entries: a change of an
//     entry's federated trust domains reaches them with the next bundle
//     change.
//   - FetchJWTSVID returns one JWT-SVID per SPIFFE ID of the caller (two
//     entries with one SPIFFE ID give one token) for the audience, or only
//     the one for spiffe_id, which must be one of the caller's
//     (PermissionDenied otherwise). The audience is required: 1 to 16
//     values of 1 to 256 bytes, the server's bounds (InvalidArgument
//     otherwise). The cache reuses tokens until half their
//     lifetime; when the server is needed and away: Unavailable.
//   - ValidateJWTSVID validates with ca/jwtsvid.Validate, against the JWT
//     authorities of the token subject's trust domain, which must be the
//     local one or one the caller's entries federate with, at the Clock's
//     time. An invalid token is InvalidArgument with
//     the validator's reason; a valid one gives its SPIFFE ID and every
//     claim. With Config.Revocations (the agent's revocation list), a
//     token whose jti is revoked, or whose sub or client_id names a client
//     revoked at or after its iat, is InvalidArgument "token revoked",
//     without saying which revocation applies.
//   - The WIT-SVID profile is not provided: Unimplemented.
//
// Bundles and validation are for callers with an identity: a caller that
// matches no entry gets PermissionDenied from FetchX509Bundles,
// FetchJWTBundles (also when it loses its last entry mid-stream) and
// ValidateJWTSVID, as from SPIRE by default. The SPIFFE Workload API lets
// servers decide which callers are entitled to bundles, and go-spiffe's
// BundleSource asks for an X.509-SVID anyway. Config.
// AllowVerifiersWithoutIdentity serves them to every attested caller.
//
// # Socket
//
// Run listens through internal/unixsock, whose rules the CA server's and
// the agent's admin sockets share. It creates the socket's directory if
// it is missing (mode 0755, so that workloads of every user can reach the
// socket), and refuses a path that
// another user could redirect: every directory above the socket, along the
// path as written and along its resolved target, must be owned by this
// user or root and not be writable by group or others unless sticky (like
// /tmp), and every symbolic link on the way must be this user's or root's.
// At the socket path it replaces only a stale socket of this user; it
// refuses a symbolic link (never followed), a regular file, a directory,
// another user's socket, and a socket some server still accepts on
// (ErrSocketInUse). The socket is mode 0777: access is decided per call,
// by attestation. On exit Run removes it if it is still the file it
// created. Paths are at most MaxSocketPathLen (103) bytes: sun_path holds
// 104 with its NUL on the BSDs and macOS.
//
// # Limits
//
// MaxConnections (1024) bounds open connections, and so pinned processes
// (two file descriptors each), and MaxConnectionsPerUID (128, an eighth)
// those of any one uid, by the connection's peer credentials: more are
// closed as soon as accepted. A connection that is not served (its
// latest call was refused with "no identity issued", or it has made no
// call) is closed once it has had no call in progress for 2 s (10 s
// before its first call) on the Clock; its client reconnects on its next
// call.
// MaxConcurrentStreams (64) bounds calls per connection; MaxRecvMsgSize
// (64 KiB) requests; MaxSendMsgSize (4 MiB, the clients' default receive
// limit) responses, larger ones failing with ResourceExhausted. Request
// headers are bounded to 16 KiB, the connection preface to 10 s, and
// keepalive pings to one per 10 s.
//
// # Performance
//
// SVIDs in the cache are immutable and replaced on rotation, and the
// bundle is replaced on change, so a list of SVID pointers and a bundle
// pointer identify a response. X509SVIDResponses are marshaled once per
// such list and shared by every caller that sees the same SVIDs (bounded
// to 32 MiB, then forgotten); bundle responses once per bundle. They are
// sent as they are, without copying, by a codec that passes pre-encoded
// messages through. Each stream holds one svidcache.Subscription, whose
// one-slot channel coalesces changes: the cache never blocks on a
// stream, and a slow reader delays only its own stream (gRPC flow
// control), which sends the latest state when it can.
//
// # Caveats
//
//   - A uid with an identity can hold MaxConnectionsPerUID connections
//     with open streams; eight such uids together fill MaxConnections.
//   - Attestation is by uid, gid and executable (see unixattest): path
//     and hash selectors cannot separate processes of one uid.
//   - Stop: open streams end with Unavailable at once; unary calls in
//     flight (a JWT-SVID waiting for the server) get 5 s on the Clock,
//     then their connections are closed.
//   - Hints are empty, except on SVIDs issued by a template entry:
//     "writ-template:<entry ID>" (TemplateHintPrefix).
//   - Linux only, like unixattest and peercred.
package workloadapi
