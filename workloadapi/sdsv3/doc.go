// Package sdsv3 serves Envoy's secret discovery service (SDS, xDS v3:
// envoy.service.secret.v3.SecretDiscoveryService, StreamSecrets and
// FetchSecrets) on the agent's Workload API socket, so that Envoy gets
// X.509-SVIDs and trust bundles without speaking SPIFFE. The caller is
// identified exactly as on the Workload API (workloadapi.Server.Attest:
// the connection's peer credentials, attested once per connection);
// SDS calls need not carry the Workload API's security header, which
// Envoy does not send.
//
//	h, err := sdsv3.New(sdsv3.Config{Socket: wl, Cache: cache, Logger: log})
//	if err != nil { ... }
//	h.Register(wl.HeaderExempt()) // before wl.Run; Envoy sends no security header
//
// # Resource names
//
// As SPIRE's agent serves them, so that Envoy configurations written for
// it work unchanged:
//
//   - a SPIFFE ID of one of the caller's SVIDs: that SVID as a
//     TlsCertificate (PEM chain, leaf first, and PKCS#8 key);
//   - "default" (Config.DefaultSVIDName): the caller's first SVID, in the
//     Workload API's order (by SPIFFE ID, then entry ID);
//   - a trust domain, "spiffe://example.org": its bundle as a validation
//     context; the local one, or a foreign one the caller's entries
//     federate with (writ entry create --federates-with);
//   - "ROOTCA" (DefaultBundleName): the local trust domain's bundle;
//   - "ALL" (DefaultAllBundlesName): the local trust domain's bundle and
//     those of the foreign trust domains the caller's entries federate
//     with, in one SPIFFECertValidatorConfig, each under its own name,
//     for Envoy's SPIFFE validator.
//
// The all-bundles name may be the bundle name, as Istio's integration
// with SPIRE configures it ("ROOTCA" for every bundle): that name then
// serves every trust domain's bundle to Envoys with the SPIFFE
// validator, and the local one as trusted_ca to the others.
//
// Validation contexts use the SPIFFE validator
// (envoy.tls.cert_validator.spiffe) for Envoy 1.18 and later (by the
// node's user_agent_build_version), and trusted_ca otherwise, or when
// Config.DisableSPIFFECertValidation is set. An Envoy's node metadata
// disable_spiffe_cert_validation (true or false, a boolean or a string)
// overrides the Config for that Envoy, as on SPIRE's agent. "ALL"
// exists only in the SPIFFE validator form: trusted_ca cannot keep trust
// domains apart. A stream's first request without names (a wildcard
// request), and a FetchSecrets without names, mean every SVID by SPIFFE
// ID and every trust domain. On a stream that has named secrets, a
// request naming none means none, as xDS says: nothing is sent until a
// request names some again.
//
// # xDS
//
// Each response carries a new version_info (a counter per stream) and a
// new nonce. A request that replies to an older nonce is ignored; a NACK
// (error_detail set) is logged as a warning and not answered, since the
// same secrets would be rejected again; the next change is sent. A
// response is pushed when the requested names change and whenever the
// secrets for the requested names change (an SVID rotated, added or
// removed, the bundle changed); changes to other SVIDs send nothing.
// A name the caller has no secret for is left out of responses, not
// refused: Envoy waits for it (its initial_fetch_timeout), and it is
// pushed when it exists (an entry registered, an SVID signed). Nothing is
// sent while no requested name exists. Other resource types than Secret,
// and requests of more than MaxResourceNames (1024) names, are refused
// with InvalidArgument. A caller that matches no entry gets
// PermissionDenied (Unavailable until the agent has its first entries),
// also when it loses its last entry mid-stream.
// Before each response, whether a request or a change brought it, the
// caller is confirmed to be still the process that connected
// (workloadapi.Caller.Check): once that process has exited, executed
// another program or changed its uid or gid, the stream ends with
// PermissionDenied and sends nothing more.
//
// # Caveats
//
//   - A foreign bundle without X.509 authorities (JWT keys only) has no
//     validation context: it validates no TLS peer.
//   - State-of-the-world SDS cannot delete a secret Envoy holds. When an
//     entry is deleted, its SVID is left out of the next response and is
//     never sent again, even when asked for by name; Envoy keeps (and
//     may reject, as missing, a response without) a secret a listener or
//     cluster still uses, until it is replaced or the SVID expires.
//   - DeltaSecrets (incremental xDS) is Unimplemented; Envoy uses
//     StreamSecrets unless configured for delta.
//   - The socket's limits apply: MaxConcurrentStreams (64) per
//     connection; Envoy opens one stream per SDS secret.
//   - The tests play Envoy with go-control-plane's generated client; no
//     Envoy binary runs in them.
package sdsv3
