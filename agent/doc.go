// Package agent is Writ's node agent. It attests to the CA server with a
// join token or a NodeAttestor (x509pop, sshpop: a credential the host
// keeps, used again whenever the agent has no valid SVID or the server
// stops recognizing it), keeps the node's registration entries and their X.509-SVIDs
// in a svidcache.Cache for the Workload API, and renews everything on
// time, on its own, through server outages.
//
//	a, err := agent.New(agent.Config{
//		ServerAddress:   "ca.example.org:8081",
//		TrustDomain:     td,
//		DataDir:         "/var/lib/writ-agent",
//		JoinToken:       token,         // first start only
//		TrustBundlePath: "/etc/writ/ca.pem",
//		Logger:          logger,
//	})
//	if err != nil { ... }
//	go a.Run(ctx)
//	<-a.Ready()
//	svids := a.Cache().X509SVIDs(selectors)
//	nodeSel := a.NodeSelectors() // "x509pop:subject:cn:web1", ... as the server recorded them
//
// # Identity and trust
//
// The data directory (datadir: 0700, locked) holds agent_state.json
// (0600): the agent's key, its SVID chain, the bundle and the foreign
// bundles its entries federate with (sent by Sync) in one file,
// replaced as a whole (temporary file, fsync, rename, fsync of the
// directory), so that a crash during a renewal leaves the old identity
// or the new one, never a key beside another key's SVID. The earlier
// layout (agent_svid.pem, agent_key.pem, bundle.json) is read once and
// moved into it. Started
// with a valid saved SVID, the agent reconnects without a token (a token
// given is ignored, and used only if the server refuses the saved SVID).
// Without one it attests with the token, authenticating the server first
// with --trust-bundle, else the saved bundle, else not at all under
// --insecure-bootstrap (logged as a warning). An expired saved SVID and
// no token is an error telling the operator to attest again.
//
// # Loop
//
// connect -> renew the agent SVID if due -> Sync -> apply each message
// (entries through the ca/entry parsers; a malformed one is logged and
// skipped) -> sign what is missing at once and what is due at its time.
// Signing is batched without delay: everything pending when the signer
// looks (up to MaxBatch) goes in one BatchSignX509SVID, and what arrives
// during that call goes in the next. Pending entries are taken by
// priority: entries a connected workload matches that have no SVID
// (svidcache.Cache.Wanted), changed entries, new entries, due rotations,
// then the backlog. The cache keeps at most Config.MaxX509SVIDs SVIDs of
// entries no workload matches (least recently used dropped first), so new
// and backlog entries are signed only while it has room, and a rotation
// falls due only for an SVID still held; the rest are signed when a
// workload asks. Keys are made per batch, never for the whole backlog. Workload keys (ECDSA P-256) are made
// here and never leave the node except to their workload. Rotation is at
// half life minus a per-SVID jitter (agent/rotate), armed on the injected
// clock. The agent SVID is renewed the same way; the agent then
// reconnects so that the server sees the new certificate; a JWT-SVID or
// downstream call a workload makes meanwhile (or whose call the old
// connection's close cut short) waits up to two seconds for the new
// connection and goes through it. Every wait is
// at most a minute, so that a step of the wall clock is noticed within
// it: after a step forward, what fell due (or expired) is renewed then;
// after a step back of more than a minute since an SVID arrived, it is
// renewed then too, rather than when the wall clock reaches its rotation
// time again.
//
// On a lost connection the cache keeps serving (never anything expired)
// and the agent reconnects with exponential backoff and full jitter
// (ReconnectBackoff), after a random delay of up to ReconnectSpread when
// an established connection broke, so that agents do not return to a
// restarted server all at once; the first start has no delay. The full
// Sync message after reconnecting replaces the cache's entries.
//
// # Several servers
//
// Config.ServerAddresses lists servers that share one datastore (and so
// one agent list and bundle). The agent holds one connection, to one of
// them, starting at a random one; each new attempt, after a lost
// connection or a failed one, goes to the next in turn, a host name
// counting as each address it resolves to (resolved again every round).
// Backoff grows once per round of all servers. Every server is
// authenticated as the one server is (its SVID, for the trust domain's
// server ID, against the bundle); the agent keeps its agent SVID and key
// (no re-attestation), the cache keeps serving, and signing goes to the
// server connected at the time. A renewed agent SVID reconnects to the
// same server.
//
// # Bundles and tainted authorities
//
// Every bundle a Sync stream brings goes to the cache, which wakes every
// Workload API stream at once, and is then acknowledged to the server
// (AckBundle, the latest one when several came), which `writ ca rotate
// --wait` waits for. With each bundle comes the set of tainted
// authorities: every X.509-SVID a tainted CA signed (svidcache
// X509SVID.AuthorityID, the leaf's authority key ID) is signed again at
// once, ahead of everything else and in as few batches as MaxBatch
// allows, while the old one is served until replaced; cached JWT-SVIDs of
// a tainted key are dropped and signed again on demand. Once nothing is
// pending, an agent SVID a tainted CA signed is renewed (after the
// workload SVIDs: the renewal makes the server refuse the old
// certificate this session uses), and the agent reconnects with it.
//
// # Revocation and health
//
// When the server refuses the agent (PermissionDenied: evicted, banned),
// the agent drops every workload SVID at once, stops renewing, reports
// unhealthy and keeps retrying with backoff in case it is unbanned. The
// gRPC health service on <data-dir>/agent-admin.sock answers SERVING
// only while the agent holds an unexpired agent SVID the server has not
// refused. Run returns an error when the agent SVID expires: only a new
// join token can bring the agent back.
//
// The agent imports only I/O-free ca/ packages (entry, x509ca, jwtsvid,
// clock) and the node API's generated code; a test enforces it.
package agent
