// Package jwtsvid signs and validates JWT-SVIDs: JWS compact tokens whose
// sub is a SPIFFE ID, per the SPIFFE JWT-SVID standard.
//
// The package is pure: it does no I/O, reads no clock and logs nothing;
// now is always a parameter. Keys to validate with come only from a
// BundleSource (go-spiffe's jwtbundle.Source), by kid, in the bundle of
// the subject's trust domain.
//
//	token, exp, err := jwtsvid.Sign(now, jwtsvid.Key{ID: kid, Signer: key},
//		id, []string{"spiffe://example.org/db"}, 5*time.Minute, keyNotAfter)
//
//	claims, err := jwtsvid.Validate(token, bundles, []string{"spiffe://example.org/db"}, now)
//	switch {
//	case errors.Is(err, jwtsvid.ErrExpired): ...
//	case err != nil: ...
//	}
//	use(claims.ID)
//
// Caveats:
//
//   - Validate is stricter than RFC 7515/7519 require and than go-spiffe:
//     only the header parameters alg, kid and typ are allowed, kid and exp
//     and aud are mandatory, base64url must be canonical, and JSON objects
//     must not repeat a member. Tokens from SPIRE and from Sign pass.
//   - sub is read before the signature is verified, only to choose the
//     trust domain's bundle; every other claim is looked at only after the
//     signature has verified, so a forged token fails with ErrSignature
//     (or ErrKeyNotFound), never with a claim error.
//   - Leeway (30 s) applies to exp, nbf and iat; go-spiffe allows 1 minute.
//   - Sign needs the key's notAfter: a token never outlives its key.
//     Expiry is in whole seconds, rounded down.
//   - Validate does not keep state: a token can be replayed until it
//     expires. Audiences are what bind it to a recipient.
//   - Header and claims in the form tokens take (no escapes, no nested
//     objects, at most 16 members) are read in one pass without
//     encoding/json; anything else goes through encoding/json, with the
//     same result (FuzzDecodeObject holds the two to it). A Verifier
//     remembers validated tokens so that a repeated one skips the
//     signature; a first-seen one costs a parse and an ES256 verification
//     (see BenchmarkVerifierFirstSeenVsES256 and writ-bench's
//     jwt.validate figures).
package jwtsvid
