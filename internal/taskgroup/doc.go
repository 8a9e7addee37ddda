// Package taskgroup runs the goroutines of one process (its loops and its
// listeners) as a group: the first task to fail stops all the others, and
// Wait returns once every task has returned, with that first error.
//
//	g, ctx := taskgroup.New(ctx, log)
//	g.Go("key manager", km.Run)
//	g.Serve("node API", lis.Addr().String(), func() error { return srv.Serve(lis) }, srv.Stop)
//	return g.Wait()
//
// A listener's serve function does not watch a context, so Serve takes
// the function that stops it too: the group calls it when the group
// stops. Serve's errors that only say "stopped" (grpc.ErrServerStopped,
// http.ErrServerClosed, net.ErrClosed) are not failures.
//
// The group is a close cousin of golang.org/x/sync/errgroup, with names
// in its errors and logs and with stop functions for listeners.
package taskgroup
