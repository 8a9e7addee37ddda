// Package jwtbatch coalesces an agent's concurrent JWT-SVID signing
// requests into batches for the server's BatchSignJWTSVID.
//
// A request that arrives while fewer than MaxInFlight batches are being
// signed is sent at once, alone, in the caller's goroutine: a lone caller
// waits for nothing more than its own call. Requests that arrive while
// MaxInFlight batches are out wait in a queue; when a batch comes back,
// the queue (up to MaxBatch requests) is sent as the next batch. Under
// load each call to the server thus carries everything that arrived
// during the previous one, and the server signs a batch in parallel.
//
//	b := jwtbatch.New(jwtbatch.Config{Signer: client})
//	token, err := b.SignJWTSVID(ctx, entryID, []string{"db"})
//
// Each request keeps its own result: one the server refuses (an entry
// not the agent's, a bad audience) fails alone, and a failure of the
// whole call fails exactly the requests it carried. A caller whose
// context ends stops waiting at once; its request, if already sent, is
// still signed for nobody. Deduplication of identical requests and the
// cache rules (expiry, tainted keys) stay with the caller, svidcache.
package jwtbatch
