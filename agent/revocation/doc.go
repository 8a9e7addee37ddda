// Package revocation keeps the list of revoked OAuth access tokens that
// the CA server pushes to agents: revocations of one token (by jti) and
// of every token a client was issued up to a time (by the client's
// SPIFFE ID). The agent holds a List, fed by its Sync stream and saved
// with its state; the Workload API's ValidateJWTSVID and the agent's
// RevocationService read it, and resource servers keep a List of their
// own from that service (workloadapi/revocationapi).
//
//	l := revocation.New(clk)
//	l.Add([]revocation.Revocation{{JTI: "7f3a", RevokedAt: now, ExpiresAt: exp}})
//	l.Revoked("7f3a", sub, clientID, iat) // true
//
// A revocation is kept until its ExpiresAt plus Grace (the clock skew a
// validator tolerates on a token's exp), then dropped by Run. A List
// does no I/O and reads time only from its clock.
package revocation
