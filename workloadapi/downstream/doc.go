// Package downstream serves the agent's DownstreamService
// (writ.agent.v1.DownstreamService) on the Workload API socket: a
// workload whose entry is downstream, such as a nested Writ server run
// with --upstream-authority writ, obtains an intermediate X.509 CA of the
// trust domain, publishes its JWT signing keys in the trust domain's
// bundle and follows that bundle.
//
//	h, err := downstream.New(downstream.Config{Socket: wl, Cache: a.Cache(), Forwarder: a.Downstream()})
//	h.Register(wl) // before wl.Run
//
// Every call must carry the Workload API's security header
// (workload.spiffe.io: true; clients dial with
// workloadapi.SecurityHeaderDialOptions), or fails with InvalidArgument.
// Callers are identified exactly as Workload API callers are (the
// connection's peer credentials, pinned at connect, then the agent's
// entries). A caller is served only if one of the entries it matches is
// downstream (the first such, by SPIFFE ID then entry ID, is named to the
// server); every other caller is refused with PermissionDenied "no
// identity issued" (Unavailable until the agent has its first entries),
// the detail going to the debug log. The server checks
// again that the entry is downstream and belongs to this agent.
//
// WatchBundle sends the local trust domain's full SPIFFE bundle with the
// set of tainted X.509 authorities at once (as soon as the agent has a
// bundle), then again after every change of either, and ends with
// PermissionDenied if the caller stops matching a downstream entry.
//
// Caveat: as for the Workload API, path and hash selectors cannot tell
// processes of one uid apart; give the downstream entry a uid of its own.
package downstream
