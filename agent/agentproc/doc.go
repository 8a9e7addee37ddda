// Package agentproc is the composition root of the agent process: it
// builds the node agent (agent), the Workload API on its socket
// (workloadapi, with unixattest identifying callers) and the services
// that share that socket, and runs them as one group: they start
// together, and when one stops, for an error or because ctx ended, the
// others stop too. `writ agent run` and `writ dev` only parse their
// flags and call it.
//
//	p, err := agentproc.New(agentproc.Config{
//		Agent:  agent.Config{TrustDomain: td, DataDir: dir, SocketPath: sock, ...},
//		Logger: log,
//	})
//	if err != nil { ... }
//	err = p.Run(ctx) // until ctx ends or a part fails
//
// The Workload API socket serves Envoy's secret discovery service
// (workloadapi/sdsv3) and the DownstreamService of nested Writ servers
// (workloadapi/downstream) beside the SPIFFE Workload API, with the same
// attestation of each connection. The agent serves its own health
// service on its admin socket.
//
// Caveat: Run may be called once, like the parts' own Run.
package agentproc
