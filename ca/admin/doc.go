// Package admin serves the CA server's admin API (ca/api/admin/v1):
// registration entries, agents, join tokens, the trust bundle and the CA's
// signing keys (CAService, through Config.CA, the server's key manager), on
// the server's local admin Unix socket.
//
// Every string a caller sends is parsed with the strict parsers of
// ca/entry, so the API accepts exactly what the CLI accepts; input that is
// not canonical is refused with InvalidArgument naming the field, never
// repaired. Missing records are NotFound, duplicates AlreadyExists, and
// any other failure is Internal with a generic message, its detail logged
// once.
//
// Callers are authorized by the uid in their socket peer credentials
// (internal/peercred), not by the socket's file mode: root, the server's
// own uid and Config.AllowedUIDs may call the admin methods. Each method
// is looked up by its canonical full name in a fixed policy table; a
// method without a policy is refused, whatever is registered on the
// server. The gRPC health service is public. Every mutation is written to
// the audit log at Info, with the caller's uid and pid and the outcome
// code, under the Key* constants (CA key mutations add the key's kind and
// ID, and whether it was forced; a token revocation its jti); join tokens and selectors are never
// logged. Key manager refusals (wrong state, too early, another server's
// key) are FailedPrecondition with the key manager's message.
//
//	svc, err := admin.New(admin.Config{
//		TrustDomain: td, Store: store, Logger: logger,
//	})
//	if err != nil { ... }
//	srv := grpc.NewServer(
//		grpc.Creds(peercred.TransportCredentials()),
//		grpc.MaxRecvMsgSize(admin.RecommendedMaxRecvMsgSize),
//		grpc.ChainUnaryInterceptor(svc.UnaryInterceptor()),
//		grpc.ChainStreamInterceptor(svc.StreamInterceptor()),
//	)
//	svc.Register(srv)
//	healthpb.RegisterHealthServer(srv, health.NewServer())
//	err = srv.Serve(unixListener)
//
// The same services may also be served over mutual TLS (TLS 1.3) to
// remote callers: RemoteServerOptions gives the credentials, limits and
// interceptors of that listener. A remote caller must present an
// X.509-SVID that verifies, with go-spiffe's x509svid.Verify, against
// the current local bundle of Config.Trust, through no tainted CA; this
// is checked at the handshake and again on every call. Its SPIFFE ID may
// call the admin methods if it is one of Config.AdminIDs or the SPIFFE
// ID of an entry with Admin set, read from the store on every call, so
// that deleting the entry refuses the next call. Methods marked secret
// (Backup, which hands out CA private keys) are served on the local
// socket only. A caller that does not verify is Unauthenticated, one that
// is not an admin PermissionDenied, with no detail; the reason is
// logged. Audit records name a remote caller by its SPIFFE ID
// (logkey.CallerID) and address (logkey.Peer).
//
// Caveats:
//   - The interceptors enforce the policy. A server built without them
//     refuses every admin call (the handlers check that the interceptor
//     ran) rather than serving unchecked.
//   - Changes take effect on live agent connections through store events,
//     not here.
//   - BanAgent and UnbanAgent change the agent record atomically
//     (Store.UpdateAgent), so a concurrent renewal cannot undo them.
//     UpdateEntry merges the masked fields into the entry as stored, inside
//     the store's read-modify-write (Store.UpdateEntry), so concurrent
//     updates of different fields of one entry, through this server or
//     another sharing the datastore, keep each other's fields.
package admin
