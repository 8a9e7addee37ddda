// Package x509pop attests a node by an X.509 certificate from the
// organisation's PKI and proof that the node holds its private key.
//
// The agent sends its certificate chain (Agent.Payload); the server
// refuses RSA keys longer than MaxRSAKeyBits in it, checks it against
// the CA bundle it trusts (chain, validity, the
// digitalSignature key usage and, when set, the clientAuth extended key
// usage), sends a fresh nonce, and verifies the agent's signature over
// it with the leaf's public key (Verifier.Attest). A recorded answer is
// worthless: every attestation signs a new nonce.
//
// A certificate that carries a SPIFFE ID of the server's own trust
// domain, or that chains only through a CA that does, is refused: it is
// an X.509-SVID, or was issued under a Writ CA (or a downstream CA),
// which the bundle trusts when it holds the CA that is also Writ's
// upstream. Such certificates name workloads and agents, not nodes.
//
//	v, _ := x509pop.NewVerifier(x509pop.Config{TrustDomain: td, Roots: roots.Load, Clock: clk})
//	res, err := v.Attest(ctx, payload, challenge)
//	// res.AgentID: spiffe://td/writ/agent/x509pop/<sha1 of the leaf>
//
// Node selectors: x509pop:subject:cn:<CN>, x509pop:subject:o:<O>,
// x509pop:subject:ou:<OU>, x509pop:serialnumber:<hex>,
// x509pop:ca:fingerprint:<sha1 of each CA certificate of the chain>,
// x509pop:san:dns:<name>, x509pop:san:email:<addr>, x509pop:san:ip:<ip>,
// x509pop:san:uri:<uri>. Values an entry could not name (control
// characters, too long) are left out.
//
// The agent ID comes from the leaf's SHA-1 fingerprint, or from a
// text/template (Config.PathTemplate) over the certificate's subject
// (see TemplateData), placed under /writ/agent/ and checked as a SPIFFE
// ID path without repair. A value the template prints may not hold '/',
// so that a subject field cannot add path segments. Two nodes that present one certificate are one
// agent: the later attestation wins.
//
// The package does no I/O: callers load files and pass the clock.
package x509pop
