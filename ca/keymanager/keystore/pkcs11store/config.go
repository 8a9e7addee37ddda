package pkcs11store

import (
	"errors"
	"fmt"
)

// labelPrefix starts the CKA_LABEL of every key this store makes.
const labelPrefix = "writ-"

// Errors callers branch on (besides the keystore ones).
var (
	// ErrToken: the module, the token or an operation in it failed.
	ErrToken = errors.New("pkcs11store: PKCS#11 token failed")
	// ErrUnsupported: this build has no PKCS#11 support (built without cgo).
	ErrUnsupported = errors.New("pkcs11store: built without PKCS#11 support (needs cgo)")
)

// Config names the token.
type Config struct {
	// Module is the path of the PKCS#11 module (a shared library).
	Module string
	// TokenLabel selects the token.
	TokenLabel string
	// PIN is the user PIN.
	PIN string
}

func (c Config) check() error {
	switch {
	case c.Module == "":
		return fmt.Errorf("%w: no PKCS#11 module", ErrToken)
	case c.TokenLabel == "":
		return fmt.Errorf("%w: no token label", ErrToken)
	}
	return nil
}
