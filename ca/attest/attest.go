package attest

import (
	"context"
	"crypto/rand"
	"errors"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/entry"
)

// Errors attestors return. The node API answers every refusal with the
// same PermissionDenied status; the wrapped detail goes to its log.
var (
	// ErrInvalidPayload: the agent's payload or challenge response is
	// malformed.
	ErrInvalidPayload = errors.New("attest: invalid payload")
	// ErrNotTrusted: the credential does not verify against the trusted
	// authorities (wrong CA, expired, wrong kind or key usage).
	ErrNotTrusted = errors.New("attest: credential not trusted")
	// ErrProofFailed: the challenge response does not prove possession
	// of the credential's key.
	ErrProofFailed = errors.New("attest: proof of possession failed")
	// ErrBadAgentID: the agent ID made from the credential is not a
	// valid agent ID.
	ErrBadAgentID = errors.New("attest: invalid agent ID")
)

// NonceSize is the size of the nonces challenge-response attestors send.
const NonceSize = 32

// MaxPayload bounds an attestation payload or challenge response, in
// bytes; the node API refuses larger ones before any attestor sees them.
const MaxPayload = 64 << 10

// Result is what a successful attestation establishes.
type Result struct {
	// AgentID is the agent's SPIFFE ID, under entry.AgentPathPrefix.
	AgentID spiffeid.ID
	// Selectors are the node's selectors, sorted and without
	// duplicates.
	Selectors []entry.Selector
}

// Challenger sends one challenge to the agent and returns its answer.
type Challenger func(ctx context.Context, challenge []byte) ([]byte, error)

// NewNonce returns NonceSize fresh random bytes.
func NewNonce() []byte {
	b := make([]byte, NonceSize)
	// crypto/rand.Read never fails: it aborts the program if the system's
	// random source is unusable.
	_, _ = rand.Read(b)
	return b
}

// AgentID returns spiffe://<td>/writ/agent/<path>, or an error wrapping
// ErrBadAgentID if that is not a valid agent ID. path is checked as it is
// (never normalized or repaired).
func AgentID(td spiffeid.TrustDomain, path string) (spiffeid.ID, error) {
	id, err := spiffeid.FromPath(td, entry.AgentPathPrefix+path)
	if err != nil {
		return spiffeid.ID{}, errors.Join(ErrBadAgentID, err)
	}
	if err := entry.CheckAgentID(id); err != nil {
		return spiffeid.ID{}, errors.Join(ErrBadAgentID, err)
	}
	return id, nil
}

// Selectors turns type:value pairs into sorted, unique selectors. Values
// that ParseSelector refuses (too long, control characters) are left out
// and counted in dropped: a node selector never carries what an entry
// could not name.
func Selectors(typ string, values []string) (sel []entry.Selector, dropped int) {
	for _, v := range values {
		s, err := entry.ParseSelector(typ + ":" + v)
		if err != nil {
			dropped++
			continue
		}
		sel = append(sel, s)
	}
	return SortSelectors(sel), dropped
}

// SortSelectors sorts sel and removes duplicates, in place.
func SortSelectors(sel []entry.Selector) []entry.Selector {
	slices.SortFunc(sel, entry.Selector.Compare)
	return slices.Compact(sel)
}
