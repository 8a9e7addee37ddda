package agent

import (
	"fmt"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/entry"
)

// parseEntry turns an entry from the wire into a validated domain entry,
// with every field through the ca/entry parsers. parent is the agent's
// SPIFFE ID. Errors never quote selectors (they may be sensitive); they
// say which field is wrong.
func parseEntry(td spiffeid.TrustDomain, parent spiffeid.ID, w *nodev1.Entry) (*entry.Entry, error) {
	id, err := entry.ParseEntryID(w.GetId())
	if err != nil {
		return nil, err
	}
	sid, err := entry.ParseIDInDomain(td, w.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	// A template is checked by Validate below: parsed, and sid its
	// literal prefix.
	tmpl := w.GetTemplate()
	if len(w.GetSelectors()) == 0 {
		return nil, fmt.Errorf("%w: entry has no selectors", entry.ErrInvalid)
	}
	if len(w.GetSelectors()) > entry.MaxSelectors {
		return nil, fmt.Errorf("%w: entry has more than %d selectors", entry.ErrInvalid, entry.MaxSelectors)
	}
	sels := make([]entry.Selector, len(w.GetSelectors()))
	for i, s := range w.GetSelectors() {
		if sels[i], err = entry.ParseSelector(s); err != nil {
			return nil, fmt.Errorf("%w: selector %d of %d does not parse", entry.ErrInvalid, i+1, len(sels))
		}
	}
	slices.SortFunc(sels, entry.Selector.Compare)
	if len(slices.Compact(slices.Clone(sels))) != len(sels) {
		return nil, fmt.Errorf("%w: a selector is listed twice", entry.ErrInvalid)
	}
	if len(w.GetDnsNames()) > entry.MaxDNSNames {
		return nil, fmt.Errorf("%w: entry has more than %d DNS names", entry.ErrInvalid, entry.MaxDNSNames)
	}
	var dns []string
	if len(w.GetDnsNames()) > 0 {
		dns = make([]string, len(w.GetDnsNames()))
		for i, n := range w.GetDnsNames() {
			if dns[i], err = entry.ParseDNSName(n); err != nil {
				return nil, err
			}
		}
	}
	if len(w.GetFederatesWith()) > entry.MaxFederatesWith {
		return nil, fmt.Errorf("%w: entry federates with more than %d trust domains", entry.ErrInvalid, entry.MaxFederatesWith)
	}
	var feds []spiffeid.TrustDomain
	for _, name := range w.GetFederatesWith() {
		td, err := entry.ParseTrustDomain(name)
		if err != nil {
			return nil, err
		}
		feds = append(feds, td)
	}
	x509TTL, err := wireTTL("X.509-SVID TTL", w.GetX509SvidTtl())
	if err != nil {
		return nil, err
	}
	jwtTTL, err := wireTTL("JWT-SVID TTL", w.GetJwtSvidTtl())
	if err != nil {
		return nil, err
	}
	e := &entry.Entry{
		ID:          id,
		SPIFFEID:    sid,
		Template:    tmpl,
		ParentID:    parent,
		Selectors:   sels,
		X509SVIDTTL: x509TTL,
		JWTSVIDTTL:  jwtTTL,
		DNSNames:    dns,
		Admin:       w.GetAdmin(),
		Downstream:  w.GetDownstream(),
		Revision:    w.GetRevision(),

		FederatesWith: feds,
	}
	if err := e.Validate(td); err != nil {
		return nil, err
	}
	return e, nil
}

// wireTTL converts a TTL in seconds; zero means the server's default.
func wireTTL(what string, secs int64) (time.Duration, error) {
	if secs == 0 {
		return 0, nil
	}
	if secs < 0 || secs > int64(entry.MaxTTL/time.Second) {
		return 0, fmt.Errorf("%w: %s of %d seconds is out of range", entry.ErrInvalid, what, secs)
	}
	d := time.Duration(secs) * time.Second
	if err := entry.CheckTTL(d); err != nil {
		return 0, err
	}
	return d, nil
}
