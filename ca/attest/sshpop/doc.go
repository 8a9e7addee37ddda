// Package sshpop attests a node by its SSH host certificate and proof
// that the node holds the host key.
//
// The agent sends its host certificate (Agent.Payload); the server
// checks that it is a host certificate (not a user certificate), signed
// by a host CA it trusts, valid now, with at least one principal; it
// sends a fresh nonce and verifies the agent's signature over it with
// the certified host key (Verifier.Attest).
//
//	v, _ := sshpop.NewVerifier(sshpop.Config{TrustDomain: td, Authorities: cas.Load, Clock: clk})
//	res, err := v.Attest(ctx, payload, challenge)
//	// res.AgentID: spiffe://td/writ/agent/sshpop/<sha256 of the host key, hex>
//
// Node selectors: sshpop:principal:<each valid principal> and
// sshpop:ca:fingerprint:<sha256 of the signing CA key, hex>.
//
// The package does no I/O: callers load files and pass the clock.
package sshpop
