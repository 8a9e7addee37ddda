// Package keymanager owns a CA server's signing keys: the X.509 CA that
// signs X.509-SVIDs and the key that signs JWT-SVIDs. It creates them,
// loads them on later starts, publishes them in the trust bundle and
// rotates them. Several servers may share one datastore; each manages its
// own keys and all of them publish into one bundle.
//
//	m, err := keymanager.New(ctx, keymanager.Config{
//		ServerID: id,          // server.LoadOrCreateServerID(dataDir)
//		KeyStore: ks,          // keystore.NewDisk(keysDir) or keystore.NewMemory()
//		Authority: nil,        // keymanager.SelfSigned{} by default
//		TrustDomain: td, KeyType: "ec-p256", CATTL: 24 * time.Hour, Store: store,
//	})
//	go m.Run(ctx)
//	iss := m.Active().X509                  // sign with it
//	chain := iss.SVIDChain(leafDER)          // send this: leaf, then intermediates
//
// # Timeline
//
// The policy is Decide: a pure function from the time and every CA key
// record to decisions (Prepare, Activate, Retire, Drop) and the time to
// run again. For each kind of key, with L the active key's lifetime:
//
//	NotBefore        +L/2              +5L/6             NotAfter
//	    |--- active ---|--- successor ---|--- successor ---|
//	                    prepared:         activated; this
//	                    published,        key retires and
//	                    not signing       stays published
//	                                                        dropped: out of
//	                                                        the bundle, record
//	                                                        and key destroyed
//
// A key stays in the bundle until it expires, by which time everything it
// signed has expired too (leaves never outlive their issuer). A key is
// always published before it signs. Tainted keys never sign and are never
// activated; they stay published until their record is removed (or they
// expire). A server without an active key (first start, a tainted active
// key, or down until its key expired) prepares and activates one at once.
//
// # Seams
//
// KeyStore holds this server's private keys (generate, load, delete, list
// IDs; they sign as crypto.Signer and never enter the datastore). Package
// keystore has Disk (PKCS#8 PEM files, 0600, in a 0700 directory) and
// Memory, and package pkcs11store keeps keys in a PKCS#11 token;
// keystoretest.Run is the suite every store passes.
//
// Authority makes the certificate of each new X.509 CA key, with its chain
// (intermediates up to, not including, the trust anchor) and the trust
// anchors to publish. SelfSigned makes a CA that is its own anchor (chain
// empty); Upstream signs it with an upstream CA held in memory, so the
// bundle holds the upstream root and SVIDs are sent with the CA
// certificate and intermediates after the leaf (x509ca.Issuer.Chain).
// Package upstream's Disk is such an upstream read from files and
// checked before use. An Authority that also implements JWTPublisher (a
// parent Writ deployment) has each new JWT key published upstream before
// it is recorded, its lifetime cut to what the upstream grants; and
// ReplaceUpstreamTainted replaces the CAs an upstream authority the
// upstream tainted signed. The CA certificate and its intermediates are
// recorded together in CAKey.CertDER (concatenated DER).
//
// # Several servers
//
// Every key record names its owner (CAKey.ServerID). A server loads and
// rotates only its own keys; other servers' records are published as they
// are, and a missing key file for another server's record is not an
// inconsistency. Keys are recorded before they are published and
// published before they sign; publishing is one atomic UpdateBundle that
// adds and never removes another server's live authorities. Whichever
// server rotates prunes expired keys of any owner (from the bundle, then
// their records), so a server that has left drops out once what it signed
// has expired. A server with no keys of its own on a datastore where
// others have keys makes its own CA for the same trust domain.
//
// # Operators
//
// Prepare, Activate and Rotate act on this server's own keys: a prepared
// key is published at once and activated only after it has been in the
// bundle for the refresh hint (unless forced); Rotate prepares and
// activates in one step, optionally waiting (beforeActivate) until agents
// were sent the new bundle. Taint and Revoke may name any server's key,
// with two limits that keep concurrent writers of one record apart: the
// active key cannot be tainted (rotate first), and another server's
// prepared key (which its owner may activate) is tainted only through its
// owner. Tainted and retired records are written by no one else. A taint
// raises the bundle's sequence number so that every server and agent sees
// it; Revoke deletes the record before removing the authority from the
// bundle, and publish removes again any key it re-added whose record was
// deleted meanwhile. Run re-evaluates when the bundle's sequence number
// changes, which is how the owner of a key learns of a taint or revoke made
// through another server (it then destroys the private key of a revoked
// key). CAKey.SignedUntil records when a key stopped signing, which bounds
// when an X.509 key may be revoked (RevocableAt).
//
// # Refusals
//
// New returns ErrInconsistent, changing nothing, when one of this server's
// records has no key in its key store (or a key that does not match), or
// when the datastore holds a bundle but no CA key records at all: a new CA
// over existing state would be trusted by no agent. Keys in the key store
// that no record names (an interrupted creation) are destroyed; keys whose
// record names another server are left alone.
//
// With Config.Volatile (a key store that does not outlive the process,
// such as keystore.Memory) a missing key of this server is not refused: it
// was lost with the previous process. Its record is retired, so it never
// signs again, and it stays in the bundle until it expires (what it signed
// keeps verifying until then); the server makes a new CA at once.
//
// Records written before keys had owners (no ServerID) are adopted by the
// first server that holds their keys.
package keymanager
