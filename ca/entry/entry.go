package entry

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Entry is a registration entry: workloads (or downstream nodes) that run
// under the agent named by ParentID and show all of Selectors receive an
// SVID for SPIFFEID.
type Entry struct {
	// ID is the entry's unique, server-assigned identifier.
	ID string
	// SPIFFEID is the ID the entry issues; for a template entry, the
	// template's literal prefix (Template.Prefix).
	SPIFFEID spiffeid.ID
	// Template, when set, makes this a template entry: a SPIFFE ID
	// pattern (see ParseTemplate) that the agent fills from each matching
	// caller's attestation data, issuing one ID per caller.
	Template string
	ParentID spiffeid.ID
	// Selectors are sorted and free of duplicates (see Normalize).
	Selectors []Selector
	// X509SVIDTTL and JWTSVIDTTL are the SVID lifetimes; zero means the
	// server's default.
	X509SVIDTTL time.Duration
	JWTSVIDTTL  time.Duration
	DNSNames    []string
	// Admin entries' SPIFFE IDs may call the admin API over mutual TLS
	// (the server's remote admin listener), with any X.509-SVID of that ID
	// that verifies against the bundle.
	Admin bool
	// Downstream entries' SVIDs may act as a downstream CA.
	Downstream bool
	// FederatesWith are the foreign trust domains whose bundles the
	// entry's workloads receive besides the local one: sorted, without
	// duplicates, never the local trust domain (see Normalize).
	FederatesWith []spiffeid.TrustDomain
	CreatedAt     time.Time
	// Revision is set by the datastore on every write and only grows.
	Revision uint64
}

// NewID returns a fresh random entry ID in UUIDv4 form.
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("entry: crypto/rand failed: " + err.Error())
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

// ParseEntryID checks that s has the form NewID produces.
func ParseEntryID(s string) (string, error) {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return "", invalid("entry ID %q is not a UUID", brief(s))
	}
	for i, r := range s {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			continue
		}
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return "", invalid("entry ID %q is not a lowercase UUID", brief(s))
		}
	}
	return s, nil
}

// Validate checks e against the rules every entry must meet in trust
// domain td: IDs in td with a path, a SPIFFE ID outside the reserved
// path (CheckWorkloadID), at least one selector, valid and
// unique selectors and DNS names, TTLs zero or within bounds. Selectors
// must already be sorted (see Normalize).
func (e *Entry) Validate(td spiffeid.TrustDomain) error {
	if e.SPIFFEID.IsZero() {
		return invalid("entry has no SPIFFE ID")
	}
	if e.ParentID.IsZero() {
		return invalid("entry has no parent ID")
	}
	for _, id := range []spiffeid.ID{e.SPIFFEID, e.ParentID} {
		if id.TrustDomain() != td {
			return invalid("SPIFFE ID %q is not in trust domain %q", id.String(), td.Name())
		}
		if id.Path() == "" {
			return invalid("SPIFFE ID %q has no path", id.String())
		}
	}
	if err := CheckWorkloadID(e.SPIFFEID); err != nil {
		return err
	}
	if e.Template != "" {
		t, err := ParseTemplate(td, e.Template)
		if err != nil {
			return err
		}
		if t.Prefix() != e.SPIFFEID {
			return invalid("template entry's SPIFFE ID %q is not its template's literal prefix %q", e.SPIFFEID.String(), t.Prefix().String())
		}
		if e.Admin || e.Downstream {
			return invalid("a template entry cannot be admin or downstream")
		}
	}
	if e.SPIFFEID == e.ParentID {
		return invalid("entry's SPIFFE ID and parent ID are the same")
	}
	if len(e.Selectors) == 0 {
		return invalid("entry has no selectors")
	}
	if len(e.Selectors) > MaxSelectors {
		return invalid("entry has more than %d selectors", MaxSelectors)
	}
	for i, s := range e.Selectors {
		if _, err := ParseSelector(s.String()); err != nil {
			return err
		}
		if i > 0 {
			switch e.Selectors[i-1].Compare(s) {
			case 0:
				return invalid("selector %q is listed twice", brief(s.String()))
			case 1:
				return invalid("selectors are not sorted")
			}
		}
	}
	if len(e.DNSNames) > MaxDNSNames {
		return invalid("entry has more than %d DNS names", MaxDNSNames)
	}
	for i, n := range e.DNSNames {
		if _, err := ParseDNSName(n); err != nil {
			return err
		}
		if slices.Contains(e.DNSNames[:i], n) {
			return invalid("DNS name %q is listed twice", n)
		}
	}
	if len(e.FederatesWith) > MaxFederatesWith {
		return invalid("entry federates with more than %d trust domains", MaxFederatesWith)
	}
	for i, f := range e.FederatesWith {
		if f.IsZero() {
			return invalid("entry federates with an empty trust domain")
		}
		if f == td {
			return invalid("entry cannot federate with its own trust domain %q", td.Name())
		}
		if i > 0 && e.FederatesWith[i-1].Compare(f) >= 0 {
			return invalid("federated trust domains are not sorted or listed twice")
		}
	}
	for _, ttl := range []time.Duration{e.X509SVIDTTL, e.JWTSVIDTTL} {
		if ttl != 0 {
			if err := CheckTTL(ttl); err != nil {
				return err
			}
		}
	}
	return nil
}

// Normalize sorts e's selectors into the canonical order Validate expects.
// Duplicates are kept so that Validate reports them. The federated trust
// domains are sorted and freed of duplicates.
func (e *Entry) Normalize() {
	slices.SortFunc(e.Selectors, Selector.Compare)
	e.FederatesWith = NormalizeTrustDomains(e.FederatesWith)
}

// NormalizeTrustDomains returns tds sorted and without duplicates (nil if
// empty). It sorts tds in place.
func NormalizeTrustDomains(tds []spiffeid.TrustDomain) []spiffeid.TrustDomain {
	if len(tds) == 0 {
		return nil
	}
	slices.SortFunc(tds, spiffeid.TrustDomain.Compare)
	return slices.Compact(tds)
}

// Clone returns a deep copy of e.
func (e *Entry) Clone() *Entry {
	c := *e
	c.Selectors = slices.Clone(e.Selectors)
	c.DNSNames = slices.Clone(e.DNSNames)
	c.FederatesWith = slices.Clone(e.FederatesWith)
	return &c
}

// UniqueKey identifies the entry's (SPIFFE ID, parent ID, selectors)
// triple. Two entries with the same key are duplicates. Selectors must be
// normalized.
func (e *Entry) UniqueKey() [sha256.Size]byte {
	h := sha256.New()
	var n [4]byte
	field := func(s string) {
		binary.BigEndian.PutUint32(n[:], uint32(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	field(e.SPIFFEID.String())
	if e.Template != "" {
		// Plain entries keep the key they always had.
		field("template")
		field(e.Template)
	}
	field(e.ParentID.String())
	for _, s := range e.Selectors {
		field(s.Type)
		field(s.Value)
	}
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

// Match reports whether every selector in want is among have. have must be
// sorted; want need not be.
func Match(want, have []Selector) bool {
	for _, s := range want {
		if _, ok := slices.BinarySearchFunc(have, s, Selector.Compare); !ok {
			return false
		}
	}
	return true
}
