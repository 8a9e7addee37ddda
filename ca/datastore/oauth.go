package datastore

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Bounds of OAuth records, which every backend enforces.
const (
	// MaxOAuthValues bounds the audiences, and the scopes, of one client.
	MaxOAuthValues = 256
	// MaxOAuthValueLength bounds one audience, scope or JTI.
	MaxOAuthValueLength = 512
)

// Prefixes of RevocationKey.
const (
	RevocationKeyJTI    = "jti:"
	RevocationKeyClient = "client:"
)

// RevocationKey is the key a revocation is stored, replaced and reported
// (Event.Key) under: "jti:"+JTI or "client:"+ClientID.
func RevocationKey(r *Revocation) string {
	if r.JTI != "" {
		return RevocationKeyJTI + r.JTI
	}
	return RevocationKeyClient + r.ClientID
}

// ValidScope reports whether s is a scope token as RFC 6749 §3.3 defines
// it: one or more of %x21 / %x23-5B / %x5D-7E (no space, quote or
// backslash), here at most MaxOAuthValueLength bytes.
func ValidScope(s string) bool {
	if s == "" || len(s) > MaxOAuthValueLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// ValidAudience reports whether s can name an audience (or be a JTI): a
// non-empty string of printable ASCII without spaces, at most
// MaxOAuthValueLength bytes.
func ValidAudience(s string) bool {
	if s == "" || len(s) > MaxOAuthValueLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// CheckOAuthClient validates c as every backend stores it: a SPIFFE ID,
// one or more audiences and any number of scopes, each list sorted and
// without duplicates.
func CheckOAuthClient(c *OAuthClient) error {
	if c == nil || c.SPIFFEID.IsZero() {
		return invalidf("oauth client: no SPIFFE ID")
	}
	if len(c.Audiences) == 0 {
		return invalidf("oauth client %s: no audience", c.SPIFFEID)
	}
	if err := checkSortedValues(c.Audiences, "audience", ValidAudience); err != nil {
		return invalidf("oauth client %s: %s", c.SPIFFEID, err)
	}
	if err := checkSortedValues(c.Scopes, "scope", ValidScope); err != nil {
		return invalidf("oauth client %s: %s", c.SPIFFEID, err)
	}
	return nil
}

func checkSortedValues(vs []string, what string, valid func(string) bool) error {
	if len(vs) > MaxOAuthValues {
		return fmt.Errorf("more than %d %ss", MaxOAuthValues, what)
	}
	for i, v := range vs {
		if !valid(v) {
			return fmt.Errorf("%s %q is not valid", what, printable(v))
		}
		if i > 0 && vs[i-1] >= v {
			return fmt.Errorf("%ss are not sorted and unique", what)
		}
	}
	return nil
}

// printable bounds and escapes v for an error message.
func printable(v string) string {
	if len(v) > 64 {
		v = v[:64] + "..."
	}
	return strings.ToValidUTF8(v, "?")
}

// CheckRevocation validates r as every backend stores it: exactly one of
// JTI and ClientID (a SPIFFE ID), and an ExpiresAt.
func CheckRevocation(r *Revocation) error {
	switch {
	case r == nil || (r.JTI == "") == (r.ClientID == ""):
		return invalidf("revocation: exactly one of JTI and client ID must be set")
	case r.JTI != "" && !ValidAudience(r.JTI):
		return invalidf("revocation: JTI is not valid")
	case r.ExpiresAt.IsZero():
		return invalidf("revocation: no expiry")
	}
	if r.ClientID != "" {
		if _, err := spiffeid.FromString(r.ClientID); err != nil {
			return invalidf("revocation: client ID is not a SPIFFE ID: %v", err)
		}
	}
	return nil
}

type oauthClientRecord struct {
	SPIFFEID  string    `json:"spiffe_id"`
	Audiences []string  `json:"audiences"`
	Scopes    []string  `json:"scopes,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// EncodeOAuthClient encodes c for storage.
func EncodeOAuthClient(c *OAuthClient) []byte {
	b, _ := json.Marshal(oauthClientRecord{SPIFFEID: c.SPIFFEID.String(), Audiences: c.Audiences, Scopes: c.Scopes,
		CreatedAt: c.CreatedAt.UTC(), UpdatedAt: c.UpdatedAt.UTC()}) // cannot fail: strings and times
	return b
}

// DecodeOAuthClient decodes a stored client.
func DecodeOAuthClient(b []byte) (*OAuthClient, error) {
	var rec oauthClientRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, err
	}
	id, err := spiffeid.FromString(rec.SPIFFEID)
	if err != nil {
		return nil, err
	}
	c := &OAuthClient{SPIFFEID: id, Audiences: rec.Audiences, Scopes: rec.Scopes, CreatedAt: rec.CreatedAt, UpdatedAt: rec.UpdatedAt}
	return c, CheckOAuthClient(c)
}

type revocationRecord struct {
	JTI       string    `json:"jti,omitempty"`
	ClientID  string    `json:"client_id,omitempty"`
	RevokedAt time.Time `json:"revoked_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// EncodeRevocation encodes r for storage.
func EncodeRevocation(r *Revocation) []byte {
	b, _ := json.Marshal(revocationRecord{JTI: r.JTI, ClientID: r.ClientID, RevokedAt: r.RevokedAt.UTC(), ExpiresAt: r.ExpiresAt.UTC()})
	return b
}

// DecodeRevocation decodes a stored revocation.
func DecodeRevocation(b []byte) (*Revocation, error) {
	var rec revocationRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, err
	}
	r := &Revocation{JTI: rec.JTI, ClientID: rec.ClientID, RevokedAt: rec.RevokedAt, ExpiresAt: rec.ExpiresAt}
	return r, CheckRevocation(r)
}

// SortedUnique returns vs sorted, without duplicates, in a new slice.
func SortedUnique(vs []string) []string {
	out := slices.Clone(vs)
	slices.Sort(out)
	return slices.Compact(out)
}
