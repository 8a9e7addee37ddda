// Package attest holds what every node attestation method shares: the
// Result a server-side attestor returns, the errors it reports, and the
// challenge nonces of challenge-response methods.
//
// A node attestation method has two halves. The server half (consumed
// by ca/nodeapi as its NodeAttestor) reads the payload the agent sends
// first, may send challenges over the node API's AttestNode stream, and
// returns the agent's SPIFFE ID and node selectors. The agent half
// (consumed by agent as its NodeAttestor) produces the payload and
// answers the challenges. The methods live in subpackages:
// x509pop (a machine certificate from the organisation's PKI) and
// sshpop (an SSH host certificate); join tokens are redeemed by the node
// API itself, against the datastore.
//
//	res, err := a.Attest(ctx, payload, func(ctx context.Context, c []byte) ([]byte, error) {
//		// send c to the agent, return its answer
//	})
//	// res.AgentID, res.Selectors
//
// The package and its subpackages do no I/O and read no clock: callers
// pass the time and the trusted keys. The agent imports them too, so
// both halves of a method are kept together and in step.
package attest
