// Package keystoretest is the conformance suite every CA key store passes
// (disk, memory, and later PKCS#11). A store's test calls Run with a
// function that returns a new, empty store:
//
//	func TestConformance(t *testing.T) {
//		keystoretest.Run(t, func(t *testing.T) keystoretest.Store { return keystore.NewMemory() })
//	}
package keystoretest
