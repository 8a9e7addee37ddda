package entry

import (
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Limits on the size of what a caller can register. They bound memory and
// storage per entry and keep every value printable in one terminal line.
const (
	MaxIDLength        = 2048 // SPIFFE-ID: URIs up to 2048 bytes
	MaxSelectors       = 64
	MaxSelectorType    = 64
	MaxSelectorValue   = 1024
	MaxDNSNames        = 32
	MaxFederatesWith   = 32
	MaxDNSNameLength   = 253
	MinTTL             = time.Second
	MaxTTL             = 7 * 24 * time.Hour
	maxDNSLabelLength  = 63
	maxUnixNameLength  = 256
	sha256HexLength    = 64
	maxUnixPathLength  = 4096
	selectorTypeChars  = "abcdefghijklmnopqrstuvwxyz0123456789_-"
	unixSelectorPrefix = "unix"
)

// ErrInvalid is wrapped by every error this package returns for input that
// does not parse or is not canonical.
var ErrInvalid = errors.New("invalid")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// ParseTrustDomain parses a trust domain name ("example.org"). It
// accepts only the canonical form: lowercase, no scheme, no path.
func ParseTrustDomain(s string) (spiffeid.TrustDomain, error) {
	if s == "" {
		return spiffeid.TrustDomain{}, invalid("trust domain is empty")
	}
	if len(s) > MaxIDLength {
		return spiffeid.TrustDomain{}, invalid("trust domain is longer than %d bytes", MaxIDLength)
	}
	td, err := spiffeid.TrustDomainFromString(s)
	if err != nil || td.Name() != s {
		return spiffeid.TrustDomain{}, invalid("trust domain %q: lowercase letters, digits, '.', '-' and '_' only, no scheme", brief(s))
	}
	return td, nil
}

// ParseID parses a SPIFFE ID. It accepts only the canonical form: no
// percent-encoding, no uppercase trust domain, no empty, "." or ".."
// segments, no trailing slash, no query or fragment.
func ParseID(s string) (spiffeid.ID, error) {
	if s == "" {
		return spiffeid.ID{}, invalid("SPIFFE ID is empty")
	}
	if len(s) > MaxIDLength {
		return spiffeid.ID{}, invalid("SPIFFE ID is longer than %d bytes", MaxIDLength)
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, invalid("SPIFFE ID %q: %v", brief(s), err)
	}
	if id.String() != s {
		return spiffeid.ID{}, invalid("SPIFFE ID %q is not in canonical form", brief(s))
	}
	return id, nil
}

// ParseIDInDomain parses a SPIFFE ID that must belong to td and name a
// workload or agent (a non-empty path).
func ParseIDInDomain(td spiffeid.TrustDomain, s string) (spiffeid.ID, error) {
	id, err := ParseID(s)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if id.TrustDomain() != td {
		return spiffeid.ID{}, invalid("SPIFFE ID %q is not in trust domain %q", s, td.Name())
	}
	if id.Path() == "" {
		return spiffeid.ID{}, invalid("SPIFFE ID %q has no path: it names the trust domain, not a workload", s)
	}
	return id, nil
}

// Selector is one property a workload or node must have for an entry to
// apply to it, such as unix:uid:1000 (Type "unix", Value "uid:1000").
type Selector struct {
	Type  string
	Value string
}

// String returns the selector as "type:value", the form ParseSelector reads.
func (s Selector) String() string { return s.Type + ":" + s.Value }

// Compare orders selectors by type, then value.
func (s Selector) Compare(o Selector) int {
	if c := strings.Compare(s.Type, o.Type); c != 0 {
		return c
	}
	return strings.Compare(s.Value, o.Value)
}

// Known keys of the unix selector type and the parser of each value.
var unixKeys = map[string]func(string) error{
	"uid":                 checkUnixID,
	"gid":                 checkUnixID,
	"supplementary_gid":   checkUnixID,
	"user":                checkUnixName,
	"group":               checkUnixName,
	"supplementary_group": checkUnixName,
	"path":                checkUnixPath,
	"sha256":              checkSHA256,
}

// ParseSelector parses "type:value". The type is lowercase letters, digits,
// '_' and '-'; the value is non-empty printable text. Selectors of type unix
// must use a known key (uid, gid, supplementary_gid, user, group,
// supplementary_group, path, sha256) with a well-formed value.
func ParseSelector(s string) (Selector, error) {
	typ, value, ok := strings.Cut(s, ":")
	if !ok {
		return Selector{}, invalid("selector %q is not of the form type:value", brief(s))
	}
	if typ == "" || len(typ) > MaxSelectorType || strings.Trim(typ, selectorTypeChars) != "" {
		return Selector{}, invalid("selector %q: type must be 1 to %d of [a-z0-9_-]", brief(s), MaxSelectorType)
	}
	if value == "" {
		return Selector{}, invalid("selector %q has an empty value", brief(s))
	}
	if len(value) > MaxSelectorValue {
		return Selector{}, invalid("selector %q: value is longer than %d bytes", brief(s), MaxSelectorValue)
	}
	if !isPrintable(value) {
		return Selector{}, invalid("selector %q: value has control or non-UTF-8 characters", brief(s))
	}
	if typ == unixSelectorPrefix {
		key, v, ok := strings.Cut(value, ":")
		check, known := unixKeys[key]
		if !ok || !known {
			return Selector{}, invalid("selector %q: unknown unix key %q (known: uid, gid, supplementary_gid, user, group, supplementary_group, path, sha256)", brief(s), brief(key))
		}
		if err := check(v); err != nil {
			return Selector{}, invalid("selector %q: %v", brief(s), err)
		}
	}
	return Selector{Type: typ, Value: value}, nil
}

func checkUnixID(v string) error {
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || strconv.FormatUint(n, 10) != v {
		return errors.New("value must be a decimal number from 0 to 4294967295 without leading zeros")
	}
	return nil
}

func checkUnixName(v string) error {
	if v == "" || len(v) > maxUnixNameLength {
		return fmt.Errorf("name must be 1 to %d characters", maxUnixNameLength)
	}
	for _, r := range v {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' || r == '.' || r == '$') {
			return errors.New("name may contain only letters, digits, '_', '-', '.' and '$'")
		}
	}
	if v[0] == '-' {
		return errors.New("name must not start with '-'")
	}
	return nil
}

func checkUnixPath(v string) error {
	if !strings.HasPrefix(v, "/") {
		return errors.New("path must be absolute")
	}
	if len(v) > maxUnixPathLength {
		return fmt.Errorf("path is longer than %d bytes", maxUnixPathLength)
	}
	if path.Clean(v) != v {
		return errors.New("path is not clean (no '.', '..', '//' or trailing '/')")
	}
	return nil
}

func checkSHA256(v string) error {
	if len(v) != sha256HexLength || strings.Trim(v, "0123456789abcdef") != "" {
		return errors.New("value must be 64 lowercase hexadecimal digits")
	}
	return nil
}

// ParseDNSName parses a DNS name for an X.509-SVID's SAN: lowercase LDH
// labels of 1 to 63 characters, at most 253 characters in all, no trailing
// dot. A leftmost label of "*" (a wildcard) is allowed when at least two
// labels follow it.
func ParseDNSName(s string) (string, error) {
	if s == "" {
		return "", invalid("DNS name is empty")
	}
	if len(s) > MaxDNSNameLength {
		return "", invalid("DNS name %q is longer than %d characters", brief(s), MaxDNSNameLength)
	}
	labels := strings.Split(s, ".")
	for i, l := range labels {
		if i == 0 && l == "*" {
			if len(labels) < 3 {
				return "", invalid("DNS name %q: a wildcard needs at least two labels after it", brief(s))
			}
			continue
		}
		if err := checkDNSLabel(l); err != nil {
			return "", invalid("DNS name %q: %v", brief(s), err)
		}
	}
	return s, nil
}

func checkDNSLabel(l string) error {
	if l == "" {
		return errors.New("empty label")
	}
	if len(l) > maxDNSLabelLength {
		return fmt.Errorf("label longer than %d characters", maxDNSLabelLength)
	}
	for _, r := range l {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-':
		case r >= 'A' && r <= 'Z':
			return errors.New("must be lowercase")
		default:
			return fmt.Errorf("character %q is not allowed", r)
		}
	}
	if l[0] == '-' || l[len(l)-1] == '-' {
		return errors.New("label must not start or end with '-'")
	}
	return nil
}

// ParseTTL parses an SVID lifetime written as a Go duration ("90s", "1h")
// or as a whole number of seconds ("3600"). It must be a whole number of
// seconds from MinTTL to MaxTTL.
func ParseTTL(s string) (time.Duration, error) {
	if s == "" {
		return 0, invalid("TTL is empty")
	}
	var d time.Duration
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 || n > int64(MaxTTL/time.Second) {
			return 0, invalid("TTL %q must be from %s to %s", brief(s), MinTTL, MaxTTL)
		}
		d = time.Duration(n) * time.Second
	} else {
		d, err = time.ParseDuration(s)
		if err != nil {
			return 0, invalid("TTL %q is not a duration such as 90s or 1h", brief(s))
		}
	}
	return d, CheckTTL(d)
}

// CheckTTL reports whether d is a valid SVID lifetime.
func CheckTTL(d time.Duration) error {
	if d < MinTTL || d > MaxTTL {
		return invalid("TTL %s must be from %s to %s", d, MinTTL, MaxTTL)
	}
	if d%time.Second != 0 {
		return invalid("TTL %s must be a whole number of seconds", d)
	}
	return nil
}

// brief returns s for an error message: escaped by Printable and cut
// to a bounded length, so that no input of any size is copied whole into
// an error.
func brief(s string) string {
	const max = 128
	if len(s) <= max {
		return Printable(s)
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return Printable(s[:cut]) + "..."
}

// Printable returns s with control characters and invalid UTF-8 escaped,
// so that operator-supplied text is safe to print in messages and logs.
func Printable(s string) string {
	if isPrintable(s) {
		return s
	}
	q := strconv.QuoteToASCII(s)
	return q[1 : len(q)-1]
}

func isPrintable(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == 0xfffd || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return true
}
