// Package svidcache is the agent's in-memory store of what workloads are
// served: the registration entries the server authorized for this node,
// the X.509-SVID of each, cached JWT-SVIDs and the local trust bundle.
// The agent writes it (Apply, SetX509SVID); the Workload API reads it.
//
// # Reading (the Workload API)
//
// A workload is identified by its selectors. X509SVIDs returns the
// unexpired X.509-SVIDs of every entry whose selectors are a subset of
// the workload's (entry.Match), ordered by SPIFFE ID, then entry ID:
//
//	svids := cache.X509SVIDs(workloadSelectors)
//	for _, s := range svids {
//		// s.ID, s.ChainDER (leaf first), s.PrivateKeyDER (PKCS#8),
//		// s.NotAfter; s.Certificates() parses the chain, s.Signer() the key
//	}
//	bundle := cache.Bundle() // *spiffebundle.Bundle, nil before the first sync
//
// Streams subscribe. Changed has a buffer of one: changes coalesce, the
// cache never blocks on a subscriber, and every read is the full current
// state, never a delta:
//
//	sub := cache.Subscribe(workloadSelectors)
//	defer sub.Close()
//	for {
//		st := sub.State() // st.X509SVIDs, st.Bundle
//		if err := send(st); err != nil { return err }
//		select {
//		case <-sub.Changed():
//		case <-ctx.Done(): return nil
//		}
//	}
//
// Subscribe(nil) follows only the bundle (FetchX509Bundles,
// FetchJWTBundles). The subscriber may see a signal with nothing new
// (for example an SVID of another entry in a shared group was rotated);
// comparing with what it last sent is up to it.
//
// JWT-SVIDs: Identities gives the entries a workload matches (whether or
// not their X.509-SVID is signed yet); FetchJWTSVID returns a token for
// one of them, cached per (SPIFFE ID, sorted audience set) and reused
// until half its lifetime. On a miss it asks the configured JWTSigner
// (the agent, which asks the server) and fails fast with an error
// wrapping ErrUnavailable when the server is away:
//
//	for _, id := range cache.Identities(workloadSelectors) {
//		if want != "" && id.ID.String() != want { continue }
//		j, err := cache.FetchJWTSVID(ctx, id.EntryID, audience)
//		// errors.Is(err, svidcache.ErrUnavailable) -> codes.Unavailable
//	}
//
// # Writing (the agent)
//
// Apply takes each Sync message (a full set or a delta, plus the bundle)
// and reports which entries need signing; SetX509SVID stores a signed
// SVID built with NewX509SVID. Run drops SVIDs as they expire and wakes
// their subscribers.
//
// # Guarantees and caveats
//
//   - Never expired: every read filters by the injected clock; Run also
//     drops expired SVIDs and tells subscribers. An SVID is expired from
//     its NotAfter on.
//   - Values returned (X509SVID, JWTSVID, the bundle) are shared and
//     immutable; slices returned are the caller's.
//   - Matching is indexed: each entry is filed under its first selector,
//     so a lookup looks only at entries filed under one of the
//     workload's selectors. Results per selector set are memoized and
//     invalidated only by changes to entries they could contain.
//   - When an entry's SPIFFE ID changes or it loses a DNS name, its old
//     SVID is dropped at once (a workload never gets an identity the
//     entry no longer grants); when it only gains DNS names, the old SVID
//     is served until the new one is set, so its workloads keep an
//     identity through the change. When an entry is removed, its SVID
//     and its SPIFFE ID's cached JWT-SVIDs go too.
//   - Bounded SVIDs: a subscription's entries count as wanted; their
//     SVIDs are always kept, and those without one are reported by
//     Wanted. At most Config.MaxX509SVIDs other SVIDs are kept, least
//     recently used dropped first (Room says how many more fit).
//   - Memory: per entry with an SVID, the entry, the chain's DER, the key
//     and its PKCS#8 form, about 1.7 KB in all; the chain is parsed on demand
//     (Certificates, Leaf) because a parsed certificate alone would cost
//     3.5 KB. JWT-SVIDs are bounded by Config.MaxJWTSVIDs and memoized
//     lookups by a fixed bound.
//   - Template entries (entry.Entry.Template) never hold an SVID: a
//     selector set they match gets the instance of the ID the template
//     fills from it (and from SetNodeSelectors), with the ID
//     entry.InstanceID(template ID, filled ID); instances are signed,
//     kept and evicted like entries, go when the template itself changes
//     or the node selectors fill them another ID, are matched again when
//     its selectors change, are updated like entries when only what they
//     carry changes (DNS names, TTLs, flags), and TemplatesIssued reports
//     them (see template.go).
//   - Bundles of foreign trust domains (Update.Federated) are kept beside
//     the local one, never merged into it, and a selector set sees those
//     its entries federate with (State.Federated, FederatedBundles).
package svidcache
