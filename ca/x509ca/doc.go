// Package x509ca is Writ's X.509 signing core: it makes self-signed CA
// certificates, checks certificate signing requests, signs X.509-SVIDs
// exactly per the SPIFFE X.509-SVID profile, and verifies X.509-SVIDs as
// strictly as it issues them.
//
// The package is pure: it does no I/O, reads no clock and logs nothing.
// Every function that depends on time takes now as a parameter. The only
// outside input is crypto/rand, for serial numbers and new keys.
//
//	key, _ := x509ca.GenerateKey(x509ca.KeyTypeECP256)
//	caCert, _ := x509ca.NewSelfSignedCA(now, td, key, 24*time.Hour)
//	iss := &x509ca.Issuer{Cert: caCert, Signer: key}
//
//	pub, err := x509ca.CheckCSR(csrDER) // proof of possession + key policy
//	if err != nil { ... }               // errors.Is(err, x509ca.ErrCSR)
//	der, err := x509ca.SignX509SVID(now, iss, x509ca.SVIDParams{
//		ID:        e.SPIFFEID, // from the registration entry
//		DNSNames:  e.DNSNames, // from the registration entry
//		TTL:       time.Hour,
//		PublicKey: pub,
//	})
//	chain := iss.SVIDChain(der) // leaf, then iss.Chain: what to send
//
// Caveats:
//
//   - A CSR is untrusted: CheckCSR returns only its public key. Subject,
//     SANs, extensions and attributes in the CSR are never looked at, and
//     nothing from them can reach a certificate.
//   - A leaf never outlives its issuer: NotAfter is capped at the issuer's
//     NotAfter, so a leaf issued near the end of the CA's life is shorter
//     than asked. Callers rotate the CA well before it expires.
//   - An issuer whose certificate is signed by an upstream CA carries its
//     Chain (Cert and the intermediates above it, never the trust anchor);
//     SVIDChain appends it to each leaf, so relying parties need only the
//     trust anchor in their bundle.
//   - SignX509SVID refuses an issuer that is not yet valid at now, so every
//     leaf is valid at the time it is issued.
//   - One key policy (ECDSA P-256/P-384, RSA 2048/3072/4096 with e=65537)
//     applies to CSRs, SVID keys and CA keys; see CheckPublicKey.
//   - VerifyX509SVID trusts the roots it is given: callers pass the X.509
//     authorities of the trust domain of the ID they expect, never a union
//     of bundles. It also ignores roots, and refuses intermediates, whose
//     SPIFFE URI SAN names another trust domain, but a root without a
//     SPIFFE URI SAN is bound to no trust domain.
package x509ca
