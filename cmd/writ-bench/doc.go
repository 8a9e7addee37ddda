// Command writ-bench measures Writ against the limits of the machine it
// runs on, in one run, and writes a report.
//
//	go run ./cmd/writ-bench --out bench-results   # make bench (a few minutes)
//	go run ./cmd/writ-bench --smoke --out DIR     # make bench-smoke: every figure, no timing checked
//	go run ./cmd/writ-bench --only limits,oauth --out DIR # the limits and the OAuth figures only
//	go run ./cmd/writ-bench --only postgres --fan-agents 2000 --out DIR   # the two-server figures alone, a smaller fan-out
//
// It builds cmd/writ once (or takes --writ-bin), starts real `writ server
// run` and `writ agent run` processes in a temporary directory, and
// measures in the same run:
//
//   - the limits: ECDSA P-256 sign and verify, x509.CreateCertificate, and
//     a stub Workload API (go-spiffe's proto, a fixed response, no
//     attestation) in a child process;
//   - CA signing: x509ca.SignX509SVID as a ratio to CreateCertificate;
//   - JWT-SVID validation: jwtsvid.Verifier on tokens it has never seen
//     against a raw ES256 verification of the same tokens, by CPU time,
//     token by token, the median ratio of rounds with its spread (goal
//     >= 0.9; in the limits phase);
//   - the agent's Workload API through go-spiffe's client: FetchX509SVID
//     with 1 and 16 callers and with 101 SVIDs, FetchJWTSVID first and
//     cached, ValidateJWTSVID, each as a ratio to the stub;
//   - the first JWT-SVID for a new audience, with 1 and 16 callers,
//     against a relay stub: a Workload API in one process that forwards
//     each request over mutual TLS to a signer in another, which signs it
//     (two hops and one ES256 signature, nothing attested, cached or
//     checked): the least work the call takes while only the server
//     holds the signing key;
//   - the server's JWT-SVID signing rate for a fleet: simulated agents
//     sending BatchSignJWTSVID calls of new audiences over mutual TLS to
//     one server, with its CPU time per token;
//   - propagation from the admin API's BatchCreateEntry to a watching
//     workload, with no and with 10,000 other entries;
//   - server and agent memory idle, at 1,000 and 10,000 entries, and per
//     open Workload API stream (10,000 streams from a child process);
//   - registration rates through the admin API and `writ entry create
//     --file`;
//   - OAuth: local validation of access tokens in workloadapi/authz per
//     core (remembered and in full) against a raw ES256 verification, the
//     time from a revocation to its effect on another agent's
//     RevocationService, and the token endpoint's issuance rate over mTLS.
//
// The stubs and the agent are measured alternately, in rounds, for the same
// total time, so that a change in the machine's speed affects both alike
// and their ratio holds.
//
// It writes results.json (one record per figure, with its unit, samples
// and the machine's description), report.md and SVG charts to --out, and
// prints progress on stderr. The report shows the reference values of
// issue 6 (SPIRE 1.16 and the stub on this machine class) beside Writ's,
// labelled as such.
//
// A figure that cannot be measured has no value (null in results.json,
// "n/a" in the report) and says why; none is ever estimated. A smoke run
// exits 1 if any figure is missing; a full run writes what it measured
// and lists what is missing.
//
// Caveats: Linux only (it reads /proc/<pid>/status and stat, and the
// agent attests callers by peer credentials). The benchmark's workload
// entries select its own uid under the agent, so it must run as a uid
// the server accepts on its admin socket (the server's own, as here, or
// root). Go runtime variables (GOGC, GOMEMLIMIT, GOMAXPROCS, GODEBUG) and
// WRIT_ and SPIFFE_ variables are removed from the environment of the
// processes it starts, so that they run as shipped. Other load on the
// machine skews every figure; the limits are measured in the same run so
// that ratios stay meaningful.
package main
