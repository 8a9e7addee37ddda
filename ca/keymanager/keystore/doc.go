// Package keystore keeps CA private keys for the key manager, by key ID.
// A key never leaves its store except as a crypto.Signer; the datastore
// holds only the keys' metadata and public parts.
//
// Disk keeps each key as a PKCS#8 PEM file (0600) in a 0700 directory,
// written atomically. Memory keeps keys in the process only: they are lost
// when it exits, which suits tests and servers whose CA need not survive a
// restart. Both pass keystoretest.Run.
//
//	ks, err := keystore.NewDisk(filepath.Join(dataDir, "keys"))
//	signer, err := ks.Generate(ctx, id, x509ca.KeyTypeECP256)
//	signer, err = ks.Load(ctx, id) // errors.Is(err, keystore.ErrNotFound)
//
// Key IDs are 32 lowercase hex digits (see ValidID), so that an ID is
// always a safe file name.
package keystore
