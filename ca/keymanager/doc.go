// Package keymanager owns the CA server's signing keys: the X.509 CA that
// signs X.509-SVIDs and the key that signs JWT-SVIDs. It creates them on
// first start, loads them on later starts, publishes them in the trust
// bundle and rotates them.
//
// Private keys are PKCS#8 PEM files (0600) in a 0700 directory; their
// metadata (state, certificate, validity) is in the datastore. Start-up
// refuses to continue when the two disagree: a key the datastore knows
// whose file is missing or corrupt, or a datastore that has a trust bundle
// but no keys. It never creates a new CA over existing state, since a new
// CA is trusted by no agent.
//
// Rotation follows the reference schedule: a successor is prepared
// (published in the bundle, not yet signing) at half the active key's
// lifetime, activated when a sixth of it remains, and the retired key
// stays in the bundle until it expires, by which time everything it signed
// has expired too (leaves never outlive their issuer).
//
//	m, err := keymanager.New(ctx, keymanager.Config{...})
//	go m.Run(ctx)
//	iss := m.Active().X509 // sign with it
package keymanager
