// Package oauth is the CA server's OAuth 2.0 authorization server: it
// issues access tokens to workloads whose only credential is their SVID.
//
// Endpoints, under the issuer URL (an https origin), are published in the
// RFC 8414 metadata at /.well-known/oauth-authorization-server:
//
//   - /token: grant_type=client_credentials (RFC 6749 §4.4) and token
//     exchange (RFC 8693). The client authenticates with its X.509-SVID over
//     mutual TLS (RFC 8705 tls_client_auth, PKI method: the chain verifies
//     against the trust domain's bundle and the SPIFFE ID is the client
//     ID; an X.509-SVID that chains to a tainted CA, whose key may have
//     leaked, authenticates nothing, as on the remote admin API), or with
//     a JWT-SVID as a client assertion (RFC 7523,
//     client_assertion_type urn:ietf:params:oauth:client-assertion-type:jwt-bearer)
//     whose aud is the token endpoint URL and nothing else (an assertion
//     also handed to another audience could be replayed by it); each
//     assertion is accepted once (datastore.Store.UseClientAssertion,
//     across every server).
//   - /introspect (RFC 7662) and /revoke (RFC 7009), authenticated the
//     same way.
//   - /keys: the JWT authorities as a JWKS, to validate tokens locally.
//
// Access tokens are JWTs per RFC 9068 (typ at+jwt) signed by the server's
// JWT authority (the keys of JWT-SVIDs, published in the bundle):
//
//	{"iss": "https://oauth.example.org", "sub": "spiffe://example.org/web",
//	 "aud": "orders", "scope": "orders:read", "client_id": "spiffe://example.org/web",
//	 "jti": "…", "iat": 1767225600, "exp": 1767225900,
//	 "cnf": {"x5t#S256": "…"}}
//
// cnf is set when the client authenticated with mTLS. A token never
// outlives the credential it was issued on, nor Config.TokenTTL. Which
// audiences and scopes a SPIFFE ID may get comes from its
// datastore.OAuthClient; a SPIFFE ID without one gets nothing. Requested
// scopes must all be granted (invalid_scope); none requested means all
// the client's scopes.
//
// Token exchange: a service holding a token issued to it (an access token
// or a JWT-SVID whose aud holds the service's SPIFFE ID) exchanges it for
// one with the same sub for a downstream audience; the new token's act
// claim names the service, with the subject token's act nested inside
// (RFC 8693 §4.1). Its scopes are those both the subject token holds and
// the service is granted (requested ones must be in both), so exchange
// never widens a token; a JWT-SVID subject token holds no scope, so its
// exchange gets what the service itself is granted.
//
// Revocation: by jti (the /revoke endpoint, by the client the token was
// issued to) or by client (the admin API). A client revocation covers the
// access tokens that name the client as client_id, as sub or as any act
// subject (a token obtained through a revoked actor, or about a revoked
// subject, cannot be exchanged on), and the client's JWT-SVIDs, as subject
// tokens and as client assertions, whose iat is at or before the
// revocation (whole seconds: a token issued in the same second is revoked
// too; the admin API stamps RevokedAt jwtsvid.Leeway ahead, for issuers
// whose clocks run ahead). Every client authentication method checks it:
// over mTLS, the client's X.509-SVIDs whose NotBefore is at or before the
// revocation authenticate nothing (Writ sets NotBefore x509ca.Backdate
// early, so one signed up to that long after the revocation is covered
// too; the client gets tokens again with its next SVID). Records of used assertions and jti revocations
// are kept until exp plus twice the leeway, so that a clock a leeway ahead
// does not prune them while one a leeway behind still accepts the token.
// Agents that check only sub and client_id should check act
// subjects as well to agree with introspection.
//
// A client may store RevokeBurst revocations at once through /revoke,
// then RevokeRate a second, and have at most MaxRevocationsPerClient
// listed, on each server; beyond that /revoke answers 503
// temporarily_unavailable with Retry-After (RFC 7009 §2.2.1) and the
// token stays valid. Revocations are datastore records that every server
// reloads when the store signals a change, and that agents receive.
//
// Errors follow RFC 6749 §5.2 and say nothing of why a client was
// refused; the reason goes to the debug log. Every client authentication
// failure (bad, expired, untrusted or replayed credential, a SPIFFE ID
// without an OAuth client) is invalid_client, with status 401 and
// WWW-Authenticate only when the client tried the Authorization header
// (which no method here uses). A subject token that is invalid or was not
// issued to the actor is invalid_request, as RFC 8693 §2.2.2 says; an
// audience not granted, or none, or several, is invalid_target.
package oauth
