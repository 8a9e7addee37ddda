// Package federation keeps the bundles of federated trust domains
// current: for each federation relationship in the datastore, a Fetcher
// on every server fetches the trust domain's bundle from its SPIFFE bundle
// endpoint (profile https_spiffe or https_web) at the bundle's refresh
// hint, checks it, and stores it, so that every server and agent sees it.
//
// A fetched bundle is refused, and the last good one kept, when it is not
// a SPIFFE bundle of that trust domain, when an authority names another
// trust domain, when its sequence number goes backwards (or, once the
// trust domain's bundle carried one, when a changed bundle comes without
// a sequence number or under the same one), when it is larger than
// MaxBundleSize or its response head larger than MaxResponseHead, or
// when the endpoint does not answer in time or authenticates as another
// identity. What the endpoint sent reaches errors, the log and the
// relationship's status cut to MaxErrorText bytes.
package federation
