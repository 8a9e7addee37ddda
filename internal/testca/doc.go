// Package testca mints X.509 certificate authorities and SVIDs at run
// time for tests, with Writ's own signing code (ca/x509ca), so that no
// test file builds certificates by hand and no committed certificate
// expires.
//
//	root := testca.New(t, td, now, 24*time.Hour)
//	inter := root.Intermediate(t, now, time.Hour)
//	svid := inter.SVID(t, spiffeid.RequireFromPath(td, "/web"), now, time.Hour)
//	pool := root.Certs() // the trust anchors
//
// Keys are ECDSA P-256. Every function fails the test (t.Fatal) on an
// error: they are for tests only.
package testca
