package entry

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Identity templates.
//
// A template entry's SPIFFE ID is a pattern whose path segments are
// either literal or one placeholder filled, on the agent, from the
// attested caller's selectors or from the agent's own node selectors:
//
//	spiffe://example.org/user/{{unix.user}}
//	spiffe://example.org/svc/{{unix.path | base}}
//	spiffe://example.org/node/{{node.x509pop.subject.cn}}/uid/{{unix.uid}}
//
// A placeholder is a whole segment: "{{", a field, optional filters
// ("| base"), "}}", spaces allowed inside the braces. A field is
// dot-separated names of [a-z0-9_-]:
//
//   - <type>.<key>[.<key>...] is the value of the caller's one selector
//     of that type whose value starts with "<key>:[<key>:...]" (so
//     {{unix.user}} is the value of unix:user:<name>, {{unix.uid}} of
//     unix:uid:<n>);
//   - node.<type>.<key>[.<key>...] is the same over the agent's node
//     selectors (x509pop:subject:cn:<cn> for {{node.x509pop.subject.cn}}).
//
// The filter base keeps what follows the last '/'. A field the caller
// has no selector for, or more than one, yields no identity; so does a
// filled value that is not a valid SPIFFE ID path segment (empty, "."
// or "..", or any character outside [A-Za-z0-9._-], which includes '/'
// and '%'). Nothing is escaped or repaired: the caller gets the ID the
// template means or none. The first segment is always literal and never
// the reserved one, so no template can name an agent or the server.

// Limits on templates.
const (
	// MaxTemplatePlaceholders bounds the placeholders of one template.
	MaxTemplatePlaceholders = 8
	templateNodeSource      = "node"
	templateOpen            = "{{"
	templateClose           = "}}"
	filterBase              = "base"
)

// ErrTemplateFill is wrapped by Template.Fill's errors: the caller's
// attestation data does not give the template a valid SPIFFE ID.
var ErrTemplateFill = errors.New("template gives no identity")

// Template is a parsed SPIFFE ID template. It is immutable.
type Template struct {
	raw    string
	td     spiffeid.TrustDomain
	segs   []templateSegment
	prefix spiffeid.ID
}

type templateSegment struct {
	lit string // a literal segment, when field is nil
	f   *templateField
}

type templateField struct {
	name   string // as written, "unix.user"
	node   bool   // from the agent's node selectors
	typ    string // selector type
	prefix string // selector value prefix, "user:"
	base   bool   // the base filter
}

// ParseTemplate parses a template in trust domain td. It must hold at
// least one placeholder, start with a literal segment, and its literal
// part must not be under the reserved path.
func ParseTemplate(td spiffeid.TrustDomain, s string) (*Template, error) {
	if len(s) > MaxIDLength {
		return nil, invalid("template is longer than %d bytes", MaxIDLength)
	}
	if !isPrintable(s) {
		return nil, invalid("template %q has control or non-UTF-8 characters", brief(s))
	}
	base := "spiffe://" + td.Name()
	rest, ok := strings.CutPrefix(s, base+"/")
	if td.IsZero() || !ok {
		return nil, invalid("template %q does not start with %s/", brief(s), base)
	}
	t := &Template{raw: s, td: td}
	n := 0
	for i, seg := range strings.Split(rest, "/") {
		if !strings.Contains(seg, templateOpen) && !strings.Contains(seg, templateClose) {
			if err := checkSegment(seg); err != nil {
				return nil, invalid("template %q: segment %d: %v", brief(s), i+1, err)
			}
			t.segs = append(t.segs, templateSegment{lit: seg})
			continue
		}
		if i == 0 {
			return nil, invalid("template %q: the first path segment must be literal, such as spiffe://%s/user/{{unix.user}}", brief(s), td.Name())
		}
		f, err := parseTemplateField(seg)
		if err != nil {
			return nil, invalid("template %q: segment %d: %v", brief(s), i+1, err)
		}
		n++
		t.segs = append(t.segs, templateSegment{f: f})
	}
	if n == 0 {
		return nil, invalid("template %q has no placeholder such as {{unix.user}}; create a plain entry instead", brief(s))
	}
	if n > MaxTemplatePlaceholders {
		return nil, invalid("template %q has more than %d placeholders", brief(s), MaxTemplatePlaceholders)
	}
	var lit []string
	for _, sg := range t.segs {
		if sg.f != nil {
			break
		}
		lit = append(lit, sg.lit)
	}
	prefix, err := spiffeid.FromSegments(td, lit...)
	if err != nil {
		return nil, invalid("template %q: %v", brief(s), err)
	}
	if err := CheckWorkloadID(prefix); err != nil {
		return nil, err
	}
	t.prefix = prefix
	return t, nil
}

// checkSegment reports whether s is a valid SPIFFE ID path segment.
func checkSegment(s string) error {
	switch s {
	case "":
		return errors.New("empty segment")
	case ".", "..":
		return fmt.Errorf("segment %q is not allowed", s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return errors.New("characters other than [A-Za-z0-9._-]")
		}
	}
	return nil
}

func parseTemplateField(seg string) (*templateField, error) {
	inner, ok := strings.CutPrefix(seg, templateOpen)
	if ok {
		inner, ok = strings.CutSuffix(inner, templateClose)
	}
	if !ok || strings.Contains(inner, templateOpen) || strings.Contains(inner, templateClose) {
		return nil, errors.New("a placeholder must be a whole segment, {{field}} or {{field | base}}")
	}
	parts := strings.Split(inner, "|")
	name := strings.TrimSpace(parts[0])
	f := &templateField{name: name}
	for _, p := range parts[1:] {
		switch strings.TrimSpace(p) {
		case filterBase:
			if f.base {
				return nil, errors.New("filter base given twice")
			}
			f.base = true
		default:
			return nil, fmt.Errorf("unknown filter %q (known: base)", brief(strings.TrimSpace(p)))
		}
	}
	names := strings.Split(name, ".")
	for _, n := range names {
		if n == "" || strings.Trim(n, selectorTypeChars) != "" {
			return nil, fmt.Errorf("field %q: names are [a-z0-9_-] separated by '.', such as unix.user or node.x509pop.subject.cn", brief(name))
		}
	}
	if names[0] == templateNodeSource {
		f.node = true
		names = names[1:]
	}
	if len(names) < 2 {
		return nil, fmt.Errorf("field %q names no selector key, such as unix.user or node.x509pop.subject.cn", brief(name))
	}
	f.typ = names[0]
	f.prefix = strings.Join(names[1:], ":") + ":"
	if f.typ == unixSelectorPrefix && !f.node {
		key := strings.TrimSuffix(f.prefix, ":")
		if _, known := unixKeys[key]; !known {
			return nil, fmt.Errorf("field %q: unknown unix key (known: uid, gid, user, group, path, sha256)", brief(name))
		}
	}
	return f, nil
}

// String returns the template as written.
func (t *Template) String() string { return t.raw }

// Prefix returns the ID made of the literal segments before the first
// placeholder: every ID the template fills is under it.
func (t *Template) Prefix() spiffeid.ID { return t.prefix }

// Fields returns the names of the template's placeholders, in order.
func (t *Template) Fields() []string {
	var out []string
	for _, s := range t.segs {
		if s.f != nil {
			out = append(out, s.f.name)
		}
	}
	return out
}

// UsesNode reports whether the template has a node.* placeholder.
func (t *Template) UsesNode() bool {
	for _, s := range t.segs {
		if s.f != nil && s.f.node {
			return true
		}
	}
	return false
}

// Fill fills the template from a caller's selectors (workload) and its
// agent's (node). It returns the SPIFFE ID and the workload selectors
// the values came from. Errors wrap ErrTemplateFill and name the field
// and the reason, never the value.
func (t *Template) Fill(workload, node []Selector) (spiffeid.ID, []Selector, error) {
	segs := make([]string, len(t.segs))
	var used []Selector
	for i, s := range t.segs {
		if s.f == nil {
			segs[i] = s.lit
			continue
		}
		from := workload
		if s.f.node {
			from = node
		}
		v, found, err := s.f.fill(from)
		if err != nil {
			return spiffeid.ID{}, nil, err
		}
		segs[i] = v
		if !s.f.node {
			used = append(used, found)
		}
	}
	id, err := spiffeid.FromSegments(t.td, segs...)
	if err == nil && len(id.String()) > MaxIDLength {
		err = fmt.Errorf("longer than %d bytes", MaxIDLength)
	}
	if err == nil {
		err = CheckWorkloadID(id)
	}
	if err != nil {
		return spiffeid.ID{}, nil, fmt.Errorf("%w: %v", ErrTemplateFill, err)
	}
	return id, used, nil
}

// fill returns the segment f fills from selectors, and the selector it
// came from. Errors wrap ErrTemplateFill and never quote the value.
func (f *templateField) fill(from []Selector) (string, Selector, error) {
	var (
		found Selector
		count int
	)
	for _, sel := range from {
		if sel.Type == f.typ && strings.HasPrefix(sel.Value, f.prefix) {
			found = sel
			count++
		}
	}
	switch count {
	case 0:
		return "", Selector{}, fmt.Errorf("%w: field %s: no such selector", ErrTemplateFill, f.name)
	case 1:
	default:
		return "", Selector{}, fmt.Errorf("%w: field %s: %d selectors, want one", ErrTemplateFill, f.name, count)
	}
	v := found.Value[len(f.prefix):]
	if f.base {
		v = v[strings.LastIndexByte(v, '/')+1:]
	}
	if err := checkSegment(v); err != nil {
		return "", Selector{}, fmt.Errorf("%w: field %s: value is not a valid path segment: %v", ErrTemplateFill, f.name, err)
	}
	return v, found, nil
}

// ConformsFor reports whether id is one the template fills for an agent
// whose node selectors are node: it conforms (Conforms), and each node.*
// placeholder holds exactly what Fill makes of node. The workload
// placeholders are left to the agent, which alone sees the caller; the
// node ones the server checks against the selectors it recorded, so
// that an agent cannot take another node's values.
func (t *Template) ConformsFor(id spiffeid.ID, node []Selector) bool {
	if !t.Conforms(id) {
		return false
	}
	segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	for i, s := range t.segs {
		if s.f == nil || !s.f.node {
			continue
		}
		v, _, err := s.f.fill(node)
		if err != nil || v != segs[i] {
			return false
		}
	}
	return true
}

// Conforms reports whether id is one the template can fill: in its
// trust domain, with the same number of segments, each literal segment
// equal and each placeholder segment a valid segment, and not reserved.
// The server checks what an agent asks it to sign with it.
func (t *Template) Conforms(id spiffeid.ID) bool {
	if id.TrustDomain() != t.td || IsReserved(id) {
		return false
	}
	segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(segs) != len(t.segs) {
		return false
	}
	for i, s := range t.segs {
		if s.f == nil && segs[i] != s.lit {
			return false
		}
		if checkSegment(segs[i]) != nil {
			return false
		}
	}
	return true
}

// Overlaps reports whether t and o could fill the same SPIFFE ID: the
// same number of segments, and at each one a placeholder on either side
// or equal literals. Templates written identically fill an ID from the
// same fields, so they do not count as overlapping.
func (t *Template) Overlaps(o *Template) bool {
	if t.raw == o.raw || t.td != o.td || len(t.segs) != len(o.segs) {
		return false
	}
	for i, s := range t.segs {
		os := o.segs[i]
		if s.f == nil && os.f == nil && s.lit != os.lit {
			return false
		}
	}
	return true
}

// CheckTemplateOverlap reports whether e, a template entry, and o, any
// other entry, could issue the same SPIFFE ID to different callers: o's
// template overlaps e's (Overlaps), or o's plain ID is one e's template
// fills. td is their trust domain.
func CheckTemplateOverlap(td spiffeid.TrustDomain, e, o *Entry) error {
	if e.Template == "" || e.ID != "" && e.ID == o.ID {
		return nil
	}
	t, err := ParseTemplate(td, e.Template)
	if err != nil {
		return err
	}
	if o.Template == "" {
		if t.Conforms(o.SPIFFEID) {
			return invalid("template %q can fill %q, the SPIFFE ID of entry %s; two entries would issue one ID to different callers", brief(e.Template), o.SPIFFEID.String(), o.ID)
		}
		return nil
	}
	ot, err := ParseTemplate(td, o.Template)
	if err != nil {
		return nil // an unparsable stored template fills nothing
	}
	if t.Overlaps(ot) {
		return invalid("template %q overlaps template %q of entry %s: both could fill the same SPIFFE ID for different callers; make a literal segment differ", brief(e.Template), brief(o.Template), o.ID)
	}
	return nil
}

// InstanceIDSeparator separates a template entry's ID from a filled
// SPIFFE ID in the ID the agent gives one filled instance of a template
// (see InstanceID). It cannot occur in an entry ID.
const InstanceIDSeparator = "|"

// InstanceID returns the agent-local ID of the instance of template
// entry entryID that issues id.
func InstanceID(entryID string, id spiffeid.ID) string {
	return entryID + InstanceIDSeparator + id.String()
}

// SplitInstanceID splits an ID made by InstanceID; ok is false for any
// other ID.
func SplitInstanceID(s string) (entryID, spiffeID string, ok bool) {
	return strings.Cut(s, InstanceIDSeparator)
}

// Issued is what one agent last reported a template entry issues: the
// SPIFFE IDs (at most a bounded number listed) and how many there are.
type Issued struct {
	AgentID    spiffeid.ID
	SPIFFEIDs  []string
	Count      int
	ReportedAt time.Time
}
