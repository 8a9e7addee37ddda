package jointoken

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
)

// Size is the number of random bytes in a token.
const Size = 32

// Length is the length of a token as New returns it: Size bytes in
// unpadded base64url. Anything longer cannot be a token.
const Length = (Size*8 + 5) / 6

// New returns a fresh token: Size bytes from crypto/rand in base64url
// without padding.
func New() string {
	var b [Size]byte
	// crypto/rand.Read never fails: it aborts the program if the system's
	// random source is unusable, so a token is never predictable.
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Hash returns the lowercase hex SHA-256 of token, the form in which
// tokens are stored and looked up.
func Hash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}
