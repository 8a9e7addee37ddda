package admin

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

// entryField is one Entry field that create and update set: parse reads
// it from the wire into dst, copy copies it between domain entries.
type entryField struct {
	name  string
	parse func(s *Service, dst *entry.Entry, w *adminv1.Entry) error
	copy  func(dst, src *entry.Entry)
}

// entryFields are the settable fields in proto order, named as in
// update_mask.
var entryFields = []entryField{
	{
		name: fieldSPIFFEID,
		parse: func(s *Service, dst *entry.Entry, w *adminv1.Entry) (err error) {
			if w.GetTemplate() != "" {
				return s.parseTemplate(dst, w)
			}
			dst.SPIFFEID, err = s.parseWorkloadID(fieldSPIFFEID, w.GetSpiffeId())
			dst.Template = ""
			return err
		},
		// spiffe_id and template are one field: setting it sets both.
		copy: func(dst, src *entry.Entry) { dst.SPIFFEID, dst.Template = src.SPIFFEID, src.Template },
	},
	{
		name: "parent_id",
		parse: func(s *Service, dst *entry.Entry, w *adminv1.Entry) (err error) {
			dst.ParentID, err = s.parseID("parent_id", w.GetParentId())
			return err
		},
		copy: func(dst, src *entry.Entry) { dst.ParentID = src.ParentID },
	},
	{
		name: "selectors",
		parse: func(_ *Service, dst *entry.Entry, w *adminv1.Entry) (err error) {
			dst.Selectors, err = parseSelectors("selectors", w.GetSelectors())
			return err
		},
		copy: func(dst, src *entry.Entry) { dst.Selectors = src.Selectors },
	},
	{
		name: "x509_svid_ttl",
		parse: func(_ *Service, dst *entry.Entry, w *adminv1.Entry) (err error) {
			dst.X509SVIDTTL, err = parseTTL("x509_svid_ttl", w.GetX509SvidTtl())
			return err
		},
		copy: func(dst, src *entry.Entry) { dst.X509SVIDTTL = src.X509SVIDTTL },
	},
	{
		name: "jwt_svid_ttl",
		parse: func(_ *Service, dst *entry.Entry, w *adminv1.Entry) (err error) {
			dst.JWTSVIDTTL, err = parseTTL("jwt_svid_ttl", w.GetJwtSvidTtl())
			return err
		},
		copy: func(dst, src *entry.Entry) { dst.JWTSVIDTTL = src.JWTSVIDTTL },
	},
	{
		name: "dns_names",
		parse: func(_ *Service, dst *entry.Entry, w *adminv1.Entry) (err error) {
			dst.DNSNames, err = parseDNSNames("dns_names", w.GetDnsNames())
			return err
		},
		copy: func(dst, src *entry.Entry) { dst.DNSNames = src.DNSNames },
	},
	{
		name: "admin",
		parse: func(_ *Service, dst *entry.Entry, w *adminv1.Entry) error {
			dst.Admin = w.GetAdmin()
			return nil
		},
		copy: func(dst, src *entry.Entry) { dst.Admin = src.Admin },
	},
	{
		name: "downstream",
		parse: func(_ *Service, dst *entry.Entry, w *adminv1.Entry) error {
			dst.Downstream = w.GetDownstream()
			return nil
		},
		copy: func(dst, src *entry.Entry) { dst.Downstream = src.Downstream },
	},
	{
		name: fieldFederatesWith,
		parse: func(_ *Service, dst *entry.Entry, w *adminv1.Entry) (err error) {
			dst.FederatesWith, err = parseFederatesWith(fieldFederatesWith, w.GetFederatesWith())
			return err
		},
		copy: func(dst, src *entry.Entry) { dst.FederatesWith = src.FederatesWith },
	},
}

// fieldFederatesWith is the name of the federates_with field.
const fieldFederatesWith = "federates_with"

// parseFederatesWith parses trust domain names; it does not sort them.
func parseFederatesWith(field string, vs []string) ([]spiffeid.TrustDomain, error) {
	if len(vs) > entry.MaxFederatesWith {
		return nil, invalidf("invalid %s: %d trust domains, at most %d allowed", field, len(vs), entry.MaxFederatesWith)
	}
	var out []spiffeid.TrustDomain
	for i, v := range vs {
		td, err := entry.ParseTrustDomain(v)
		if err != nil {
			return nil, invalidField(fmt.Sprintf("%s[%d]", field, i), err)
		}
		out = append(out, td)
	}
	return out, nil
}

// fieldSPIFFEID is the name of the spiffe_id field.
const fieldSPIFFEID = "spiffe_id"

// entryFieldNames lists entryFields for messages.
var entryFieldNames = func() string {
	names := make([]string, len(entryFields))
	for i, f := range entryFields {
		names[i] = f.name
	}
	return strings.Join(names, ", ")
}()

// lookupEntryField returns the settable field called name.
func lookupEntryField(name string) (entryField, bool) {
	for _, f := range entryFields {
		if f.name == name {
			return f, true
		}
	}
	return entryField{}, false
}

// parseID parses a SPIFFE ID in the server's trust domain.
func (s *Service) parseID(field, v string) (spiffeid.ID, error) {
	id, err := entry.ParseIDInDomain(s.td, v)
	if err != nil {
		return spiffeid.ID{}, invalidField(field, err)
	}
	return id, nil
}

// parseWorkloadID parses the SPIFFE ID of an entry: in the server's
// trust domain and outside the path reserved for agents and the server.
func (s *Service) parseWorkloadID(field, v string) (spiffeid.ID, error) {
	id, err := entry.ParseWorkloadID(s.td, v)
	if err != nil {
		return spiffeid.ID{}, invalidField(field, err)
	}
	return id, nil
}

// parseTemplate sets dst's template and SPIFFE ID (the template's
// literal prefix) from w. w's spiffe_id must be empty or that prefix.
func (s *Service) parseTemplate(dst *entry.Entry, w *adminv1.Entry) error {
	t, err := entry.ParseTemplate(s.td, w.GetTemplate())
	if err != nil {
		return invalidField("template", err)
	}
	if v := w.GetSpiffeId(); v != "" && v != t.Prefix().String() {
		return invalidf("invalid spiffe_id: with a template it must be empty or the template's literal prefix %s", t.Prefix())
	}
	dst.SPIFFEID, dst.Template = t.Prefix(), t.String()
	return nil
}

// parseAgentID parses the SPIFFE ID of an agent: in the server's trust
// domain and under the agent path.
func (s *Service) parseAgentID(field, v string) (spiffeid.ID, error) {
	id, err := entry.ParseAgentID(s.td, v)
	if err != nil {
		return spiffeid.ID{}, invalidField(field, err)
	}
	return id, nil
}

func parseEntryID(field, v string) (string, error) {
	id, err := entry.ParseEntryID(v)
	if err != nil {
		return "", invalidField(field, err)
	}
	return id, nil
}

// parseSelectors parses each selector; it does not sort them.
func parseSelectors(field string, vs []string) ([]entry.Selector, error) {
	if len(vs) > entry.MaxSelectors {
		return nil, invalidf("invalid %s: %d selectors, at most %d allowed", field, len(vs), entry.MaxSelectors)
	}
	sels := make([]entry.Selector, 0, len(vs))
	for i, v := range vs {
		sel, err := entry.ParseSelector(v)
		if err != nil {
			return nil, invalidField(fmt.Sprintf("%s[%d]", field, i), err)
		}
		sels = append(sels, sel)
	}
	return sels, nil
}

func parseDNSNames(field string, vs []string) ([]string, error) {
	if len(vs) > entry.MaxDNSNames {
		return nil, invalidf("invalid %s: %d DNS names, at most %d allowed", field, len(vs), entry.MaxDNSNames)
	}
	names := make([]string, 0, len(vs))
	for i, v := range vs {
		n, err := entry.ParseDNSName(v)
		if err != nil {
			return nil, invalidField(fmt.Sprintf("%s[%d]", field, i), err)
		}
		names = append(names, n)
	}
	return names, nil
}

// maxDurationSeconds is the most seconds a time.Duration can hold.
const maxDurationSeconds = math.MaxInt64 / int64(time.Second)

// parseTTL converts a TTL in seconds, 0 meaning the server's default, to
// a duration that entry.CheckTTL accepts.
func parseTTL(field string, secs int64) (time.Duration, error) {
	if secs == 0 {
		return 0, nil
	}
	// Only guards the conversion; entry.CheckTTL sets the bounds.
	if secs < -maxDurationSeconds || secs > maxDurationSeconds {
		return 0, invalidf("invalid %s: %d seconds is out of range", field, secs)
	}
	d := time.Duration(secs) * time.Second
	if err := entry.CheckTTL(d); err != nil {
		return 0, invalidField(field, err)
	}
	return d, nil
}

// checkEntry normalizes e and checks it as a whole.
func (s *Service) checkEntry(e *entry.Entry) error {
	e.Normalize()
	if err := e.Validate(s.td); err != nil {
		return invalidField("entry", err)
	}
	if e.Template != "" && len(s.adminIDs) > 0 {
		// As with an admin entry's ID (CheckTemplateOverlap): the
		// workloads the template matches must not get an admin ID.
		t, err := entry.ParseTemplate(s.td, e.Template)
		if err != nil {
			return invalidField("template", err)
		}
		for id := range s.adminIDs {
			if t.Conforms(id) {
				return invalidf("invalid template: %q can fill %s, an admin SPIFFE ID of the server's configuration; make a literal segment differ", e.Template, id)
			}
		}
	}
	return nil
}

// entryFromWire parses an entry to create. Its output-only fields
// (created_at, revision) are ignored; an id, if given, must be in the form
// entry.NewID makes.
func (s *Service) entryFromWire(w *adminv1.Entry) (*entry.Entry, error) {
	if w == nil {
		return nil, invalidf("entry is missing")
	}
	e := &entry.Entry{}
	if w.GetId() != "" {
		id, err := parseEntryID("id", w.GetId())
		if err != nil {
			return nil, err
		}
		e.ID = id
	}
	for _, f := range entryFields {
		if err := f.parse(s, e, w); err != nil {
			return nil, err
		}
	}
	if err := s.checkEntry(e); err != nil {
		return nil, err
	}
	return e, nil
}

// parseUpdateMask returns the fields mask names, each of which must be
// settable and named once.
func parseUpdateMask(mask []string) ([]entryField, error) {
	if len(mask) == 0 {
		return nil, invalidf("update_mask is empty: name the fields to set (%s)", entryFieldNames)
	}
	if len(mask) > len(entryFields) {
		return nil, invalidf("update_mask names %d fields; there are only %d (%s)", len(mask), len(entryFields), entryFieldNames)
	}
	fields := make([]entryField, 0, len(mask))
	for i, name := range mask {
		f, ok := lookupEntryField(name)
		if !ok {
			return nil, invalidf("update_mask: unknown field %q (settable: %s)", entry.Printable(name), entryFieldNames)
		}
		if slices.Contains(mask[:i], name) {
			return nil, invalidf("update_mask: field %q is named twice", name)
		}
		fields = append(fields, f)
	}
	return fields, nil
}

func agentToWire(a *datastore.Agent) *adminv1.Agent {
	return &adminv1.Agent{
		SpiffeId:        a.SPIFFEID.String(),
		AttestationType: a.AttestationType,
		SerialNumber:    a.SerialNumber,
		CertNotAfter:    unixSeconds(a.CertNotAfter),
		Banned:          a.Banned,
		CreatedAt:       unixSeconds(a.CreatedAt),
		UpdatedAt:       unixSeconds(a.UpdatedAt),
		NodeSelectors:   selectorStrings(a.Selectors),
	}
}

func selectorStrings(sel []entry.Selector) []string {
	var out []string
	for _, x := range sel {
		out = append(out, x.String())
	}
	return out
}

// unixSeconds is t in Unix seconds, 0 for the zero time.
func unixSeconds(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// knownTrustDomains returns a function that tells whether the server holds
// a bundle of a trust domain or has a federation relationship with it.
// The store is read once, at the first call that needs it.
func (s *Service) knownTrustDomains(ctx context.Context) func(spiffeid.TrustDomain) (bool, error) {
	var known map[spiffeid.TrustDomain]struct{}
	return func(td spiffeid.TrustDomain) (bool, error) {
		if known == nil {
			bundles, err := s.store.ListBundles(ctx)
			if err != nil {
				return false, fmt.Errorf("list bundles: %w", err)
			}
			feds, err := s.store.ListFederations(ctx)
			if err != nil {
				return false, fmt.Errorf("list federations: %w", err)
			}
			known = make(map[spiffeid.TrustDomain]struct{}, len(bundles)+len(feds))
			for _, b := range bundles {
				known[b.TrustDomain()] = struct{}{}
			}
			for _, f := range feds {
				known[f.TrustDomain] = struct{}{}
			}
		}
		_, ok := known[td]
		return ok, nil
	}
}

// checkFederatesWith refuses (InvalidArgument) a federated trust domain
// for which the server holds no bundle and has no federation
// relationship, as SPIRE refuses an unknown federated bundle. A
// non-status error is a store failure.
func checkFederatesWith(e *entry.Entry, known func(spiffeid.TrustDomain) (bool, error)) error {
	for _, td := range e.FederatesWith {
		ok, err := known(td)
		if err != nil {
			return err
		}
		if !ok {
			return invalidf("invalid %s: no bundle and no federation relationship for trust domain %q: add one first (writ bundle set or writ federation create)", fieldFederatesWith, td.Name())
		}
	}
	return nil
}
