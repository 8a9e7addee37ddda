package keystore

import (
	"errors"
	"strings"
)

// Errors callers branch on; every implementation returns them (wrapped).
var (
	// ErrNotFound: the store holds no key with that ID.
	ErrNotFound = errors.New("keystore: key not found")
	// ErrExists: Generate was asked for an ID the store already holds.
	ErrExists = errors.New("keystore: key already exists")
	// ErrCorrupt: the stored key cannot be read back as a signing key.
	ErrCorrupt = errors.New("keystore: key corrupt")
	// ErrInvalidID: the ID is not 32 lowercase hex digits.
	ErrInvalidID = errors.New("keystore: invalid key ID")
)

// ValidID reports whether id is a well-formed key ID: 32 lowercase hex
// digits.
func ValidID(id string) bool {
	return len(id) == 32 && strings.Trim(id, "0123456789abcdef") == ""
}
