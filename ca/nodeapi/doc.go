// Package nodeapi serves the node API (writ.node.v1.NodeService): the
// protocol between the CA server and the agents that run on every host.
//
// Agents attest over server-authenticated TLS and receive an agent
// X.509-SVID. Attestation goes through a NodeAttestor chosen by the type
// the agent names: join tokens (always enabled, redeemed once from the
// store) or those given in Config.NodeAttestors (ca/attest/x509pop,
// ca/attest/sshpop), which may challenge the agent over the AttestNode
// stream and return its SPIFFE ID and node selectors; the selectors are
// stored with the agent record. Every later call presents the agent SVID
// as the TLS client certificate. Over a Sync stream the agent receives the
// entries it is the parent of, those parented to the node aliases it is a
// member of, the trust bundle, and the bundles of the foreign trust
// domains those entries federate with (entry.Entry.FederatesWith), first
// in full and then every change as it is committed: a foreign bundle is
// sent again when it changes (a federation refresh or `writ bundle set`
// stores it through the datastore) and dropped when no entry of the agent
// federates with it any more. The agent then signs X.509-SVIDs and
// JWT-SVIDs for those entries, in batches (BatchSignX509SVID, BatchSignJWTSVID), each
// request of a batch authorized on its own and the batch signed on every
// CPU.
//
// For a downstream entry of the calling agent (a nested Writ server is
// its workload), MintDownstreamX509CA signs an intermediate CA of the
// trust domain with the server's current CA (its lifetime cut to the
// entry's X.509 TTL, or Config.DownstreamCATTL, and to the signing CA's),
// and PublishDownstreamJWTAuthority records the downstream's JWT key
// (owner "downstream:<entry ID>") and adds it to the bundle until it
// expires: never under a key ID the bundle holds for another owner, and
// at most MaxDownstreamJWTKeys unexpired keys per entry.
//
// A node alias is an entry whose parent ID is the server's own
// (spiffe://<td>/writ/server): an agent whose node selectors include all
// of its selectors is a member of its SPIFFE ID. When an alias or an
// agent's node selectors change, the streams of agents whose membership
// changed are sent their full set again.
//
// The service keeps, in memory, every entry (indexed by parent), every
// agent record, the local bundle and the foreign ones. It loads them from a store snapshot
// and then applies the store's event log as Store.Watch reports commits,
// without polling. Calls are authorized against this copy, and streams are
// fed from it. Nothing is signed while a store lock is held.
//
// # Usage
//
//	svc, err := nodeapi.New(nodeapi.Config{
//		TrustDomain: td,
//		Store:       store,
//		KeyManager:  km,
//		Clock:       clk,
//		Logger:      log,
//	})
//	if err != nil { ... }
//	go svc.Run(ctx)        // index, change feed, TLS certificate renewal
//	<-svc.Ready()
//	g := grpc.NewServer(svc.ServerOptions()...) // TLS, interceptors, limits
//	svc.Register(g)
//	g.Serve(lis)
//
// # Authentication
//
// The server presents its own X.509-SVID, spiffe://<td>/writ/server. The
// key is made in memory and the certificate is signed by the key manager's
// active CA. It is renewed at half its life, and as soon as the key manager
// activates another CA. A failed renewal keeps the current certificate.
//
// Attest and AttestNode need no client certificate. So that no peer can
// tie the server up with them, at most Config.MaxAttestations of them run
// at once, and at most Config.MaxAttestationsPerSource from one IP
// address (an IPv6 /64); the excess is refused at once with
// ResourceExhausted and a RetryInfo detail (which agents take as "retry
// later"), never queued. Calls of attested agents are not counted.
//
// Every other method needs a client certificate that
// passes four checks: it verifies against the current bundle at the
// current time (on the handshake, on resumed sessions, and again on each
// call); its SPIFFE ID has an agent record; its serial is the record's
// SerialNumber or PrevSerialNumber, and a server CA of the deployment (one
// of the X.509 CA keys the datastore lists, tainted ones included) signed
// it directly; and the agent is not banned. A workload SVID whose ID is an
// agent's fails on the serial; a certificate a downstream CA signed with
// an agent's serial fails on its issuer. A method with no entry in
// the policy table is refused. Refusals say only "agent is not attested" or
// "agent is banned".
//
// The serial check has one exception, for renewals the datastore could
// not record. While the datastore is unavailable, RenewAgent still signs
// (with the server's own key) for an agent whose last known record exists
// and is not banned, and returns the new SVID unrecorded. A certificate
// the record does not name authenticates its agent if it is an agent SVID
// (it carries x509ca.OIDAgentSVID, which only agent SVIDs do) for an ID
// under /writ/agent/ (a legacy agent ID outside it, which a workload
// entry may share, authenticates only by serial), a server CA of the
// deployment (one of the X.509 CA keys the datastore lists, not tainted,
// never a downstream CA) signed it directly after the record last changed
// (NotBefore plus x509ca.Backdate later than UpdatedAt), and the record
// is not banned. Every server applies this rule to its last known record,
// so an agent may fail over during the outage. Once the datastore answers
// again, the agent's next call to any server records that certificate as
// the current one (the recorded one becoming the previous), and the usual
// rule applies again.
// A server does all this only while its last successful read of the
// datastore is at most one agent SVID TTL old; beyond that it refuses
// both with Unavailable, so that a ban written meanwhile through another
// server applies everywhere within about two agent SVID lifetimes.
//
// Evicting or banning an agent, rotating its certificate away (two
// renewals), or removing its CA from the bundle ends its open Sync streams.
// It also refuses its next call once the change feed has delivered the
// change, which normally takes well under a millisecond. A stream also ends
// when the certificate it was opened with expires.
//
// # Caveats
//
//   - A join token for a banned agent is used up: the token is consumed
//     before the agent record is checked.
//   - Two hosts with one x509pop or sshpop credential are one agent: each
//     attestation replaces the record, so the later one wins and the
//     other's SVID stops authenticating.
//   - Re-attesting an existing agent replaces its record. It keeps
//     CreatedAt and drops both serials, so certificates from earlier
//     attestations stop working.
//   - RenewAgent records the serial of the certificate that made the call
//     as PrevSerialNumber. That is the agent's current serial unless the
//     agent retries with its previous certificate after a lost response; a
//     retry therefore never locks the agent out.
//   - During a datastore outage an agent that renews several times has
//     several unrecorded certificates, and each authenticates until the
//     datastore is back and records one of them, or it expires. A ban
//     cannot be written during the outage; one written before it applies
//     at every server that had read it. The signing times compared come
//     from the servers' clocks: a certificate signed within the clock
//     skew between two servers of the last recorded change may be judged
//     on the wrong side of it.
//   - Positive authorization reads the in-memory agent map. A ban or
//     eviction applies to calls once the change feed has delivered it (the
//     same moment streams close), not at the instant the store commits. A
//     certificate the map does not know (just attested or renewed) makes
//     the call wait until the index has applied every committed change.
//   - A full Sync set is one message, since the protocol cannot split it.
//     An agent with very many large entries needs a receive limit above
//     gRPC's default 4 MiB. Delta messages are split at 1,000 entries or
//     1 MiB.
//   - A stream blocked in Send (an agent that does not read) notices a
//     revocation only once Send returns. Nothing new is queued for it
//     meanwhile.
//   - TLSConfig returns a new configuration on each call. Serve each
//     listener from one configuration: session tickets are encrypted with
//     that configuration's keys.
package nodeapi
