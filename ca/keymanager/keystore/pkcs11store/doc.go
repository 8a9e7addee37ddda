// Package pkcs11store keeps CA private keys in a PKCS#11 token (an HSM,
// a smart card, SoftHSM2): keys are generated in the token, marked
// sensitive and not extractable, and sign there; only their public parts
// leave it. It passes keystoretest.Run.
//
//	s, err := pkcs11store.Open(ctx, pkcs11store.Config{
//		Module:     "/usr/lib/softhsm/libsofthsm2.so",
//		TokenLabel: "writ",
//		PIN:        pin, // read from a file, never a flag value
//	})
//	defer s.Close()
//	signer, err := s.Generate(ctx, id, x509ca.KeyTypeECP256)
//
// Each key is a key pair whose CKA_LABEL is "writ-" followed by its ID and
// whose CKA_ID is the ID's 16 bytes; List reports the key pairs labelled
// so and ignores every other object of the token. Key generation, signing
// and deletion go through go.step.sm/crypto's PKCS#11 KMS; listing and
// lookups through crypto11, on the same module.
//
// Caveats: it needs cgo (the module is loaded with dlopen); built without
// cgo, Open returns ErrUnsupported. Generate and Delete are serialised
// within one process only: two processes must not share a token's Writ
// keys (give each server a token, or a token label, of its own).
package pkcs11store
