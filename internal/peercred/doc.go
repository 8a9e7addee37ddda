// Package peercred reads the credentials (PID, uid, gid) of the process at
// the other end of a Unix socket from the kernel, and carries them into
// gRPC handlers.
//
// A server that serves gRPC on a Unix socket installs TransportCredentials;
// handlers and interceptors then learn who called with FromContext:
//
//	srv := grpc.NewServer(grpc.Creds(peercred.TransportCredentials()))
//	...
//	func (s *svc) Get(ctx context.Context, req *pb.GetRequest) (*pb.Thing, error) {
//		cred, ok := peercred.FromContext(ctx)
//		if !ok {
//			return nil, status.Error(codes.PermissionDenied, "no peer credentials")
//		}
//		...
//	}
//
// Caveats:
//   - The credentials are those the peer had when it connected (Linux
//     SO_PEERCRED); they are fixed for the life of the connection, so a
//     process that later drops or gains privileges, or passes the
//     connection to another process, keeps the identity it connected with.
//     That is the point for uid checks. The PID, though, may have exited and
//     been reused by the time a handler runs: code that attests a process
//     by its PID must confirm it is still the same process.
//   - The PID is 0 if the peer is in a PID namespace the server cannot see,
//     and the uid and gid are the overflow ids (usually 65534) if they have
//     no mapping in the server's user namespace.
//   - Only Linux is supported; elsewhere FromConn returns an error wrapping
//     errors.ErrUnsupported and every handshake fails, so a server fails
//     closed.
package peercred
