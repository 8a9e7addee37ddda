// Package publish serves the trust domain's bundle to relying parties
// outside it: the SPIFFE bundle endpoint (SPIFFE Trust Domain and Bundle
// specification, section 5) that federated trust domains fetch, and OIDC
// discovery with a JWKS for API gateways that validate JWT-SVIDs without
// knowing SPIFFE.
//
// Both answer from memory: a Source follows the bundle in the datastore
// and keeps its encodings, with their ETags, ready. Responses carry
// Cache-Control derived from the bundle's refresh hint and an ETag, and
// answer conditional requests with 304, so that a CDN or a gateway fleet
// caches them and validation needs no call to Writ at all.
package publish
