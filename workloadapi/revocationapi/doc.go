// Package revocationapi serves and follows the agent's list of revoked
// OAuth access tokens on the Workload API socket (writ.agent.v1
// RevocationService, ca/api/agent/v1).
//
// The agent registers a Service on its Workload API server:
//
//	svc, err := revocationapi.NewService(revocationapi.ServiceConfig{Socket: wl, List: agent.Revocations()})
//	svc.Register(wl)
//
// A resource server keeps its own copy with a Client, which follows the
// service's stream and reconnects when it breaks, and hands it to
// workloadapi/authz:
//
//	c, err := revocationapi.NewClient(revocationapi.ClientConfig{}) // SPIFFE_ENDPOINT_SOCKET
//	go c.Run(ctx)
//	<-c.Ready() // optional: wait for the first full list
//	a, err := authz.NewAccessTokenAuthorizer(authz.AccessTokenConfig{..., Revocations: c})
//
// Calls must carry the Workload API's security header (InvalidArgument
// otherwise); the Client sends it.
//
// Caveats: a Client that has not reached the agent yet knows no
// revocation (it does not refuse every token); wait for Ready before
// serving if that matters. While the agent is away, the Client keeps the
// last list it had, dropping entries as they expire.
package revocationapi
