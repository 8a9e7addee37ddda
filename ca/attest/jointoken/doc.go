// Package jointoken makes join tokens, the one-time secrets an operator
// hands to a new agent so that it can attest its node, and hashes them for
// storage.
//
// The server stores only Hash(token); the token itself is shown once to
// the operator who asked for it and is never logged or stored. Redeeming
// a token hashes what the agent presents and consumes the record with that
// hash.
//
//	tok := jointoken.New()
//	store.CreateJoinToken(ctx, &datastore.JoinToken{Hash: jointoken.Hash(tok), ...})
//	fmt.Println(tok) // to the operator, once
//
// The package is pure apart from reading the system's random source: it
// does no I/O and logs nothing.
package jointoken
