package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/entry"
)

// outputFormat is the value of --output.
type outputFormat int

const (
	textOutput outputFormat = iota
	jsonOutput
)

func parseOutputFormat(s string) (outputFormat, error) {
	switch s {
	case "text":
		return textOutput, nil
	case "json":
		return jsonOutput, nil
	}
	return 0, fmt.Errorf("unknown --output %q: want text or json", s)
}

// jsonEntry is an entry as --output json prints it and as
// `entry create --file` reads it.
type jsonEntry struct {
	ID          string   `json:"id"`
	SPIFFEID    string   `json:"spiffe_id"`
	ParentID    string   `json:"parent_id"`
	Selectors   []string `json:"selectors"`
	X509SVIDTTL int64    `json:"x509_svid_ttl"` // seconds; 0: the server's default
	JWTSVIDTTL  int64    `json:"jwt_svid_ttl"`  // seconds; 0: the server's default
	DNSNames    []string `json:"dns_names"`
	Admin       bool     `json:"admin"`
	Downstream  bool     `json:"downstream"`
	CreatedAt   int64    `json:"created_at"` // Unix seconds
	Revision    uint64   `json:"revision"`
	// Template is set for template entries (SPIFFEID is then its literal
	// prefix).
	Template string `json:"template,omitempty"`
	// FederatesWith names the trust domains whose bundles the entry's
	// workloads receive.
	FederatesWith []string `json:"federates_with,omitempty"`
}

func entryToJSON(e *adminv1.Entry) *jsonEntry {
	return &jsonEntry{
		ID:          e.GetId(),
		SPIFFEID:    e.GetSpiffeId(),
		ParentID:    e.GetParentId(),
		Selectors:   nonNil(e.GetSelectors()),
		X509SVIDTTL: e.GetX509SvidTtl(),
		JWTSVIDTTL:  e.GetJwtSvidTtl(),
		DNSNames:    nonNil(e.GetDnsNames()),
		Admin:       e.GetAdmin(),
		Downstream:  e.GetDownstream(),
		CreatedAt:   e.GetCreatedAt(),
		Revision:    e.GetRevision(),
		Template:    e.GetTemplate(),

		FederatesWith: e.GetFederatesWith(),
	}
}

// jsonAgent is an agent as --output json prints it.
type jsonAgent struct {
	SPIFFEID        string `json:"spiffe_id"`
	AttestationType string `json:"attestation_type"`
	SerialNumber    string `json:"serial_number"`
	CertNotAfter    int64  `json:"cert_not_after"` // Unix seconds
	Banned          bool   `json:"banned"`
	CreatedAt       int64  `json:"created_at"` // Unix seconds
	UpdatedAt       int64  `json:"updated_at"` // Unix seconds
	// NodeSelectors are set for x509pop and sshpop agents.
	NodeSelectors []string `json:"node_selectors,omitempty"`
}

func agentToJSON(a *adminv1.Agent) *jsonAgent {
	return &jsonAgent{
		SPIFFEID:        a.GetSpiffeId(),
		AttestationType: a.GetAttestationType(),
		SerialNumber:    a.GetSerialNumber(),
		CertNotAfter:    a.GetCertNotAfter(),
		Banned:          a.GetBanned(),
		CreatedAt:       a.GetCreatedAt(),
		UpdatedAt:       a.GetUpdatedAt(),
		NodeSelectors:   a.GetNodeSelectors(),
	}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// writeJSON writes v as indented JSON and a newline. Besides what
// encoding/json escapes (C0 controls, invalid UTF-8), DEL and C1 controls
// are escaped too, so no string can drive a terminal.
func writeJSON(w io.Writer, v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	_, err := w.Write(escapeJSONControls(buf.Bytes()))
	return err
}

// escapeJSONControls replaces DEL, C1 controls and invalid UTF-8 in
// encoded JSON with \u escapes. In valid JSON such characters can occur
// only inside strings, where the escape means the same character.
func escapeJSONControls(b []byte) []byte {
	clean := true
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if needsJSONEscape(r, n) {
			clean = false
			break
		}
		i += n
	}
	if clean {
		return b
	}
	out := make([]byte, 0, len(b)+16)
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if needsJSONEscape(r, n) {
			out = fmt.Appendf(out, `\u%04x`, r)
		} else {
			out = append(out, b[i:i+n]...)
		}
		i += n
	}
	return out
}

func needsJSONEscape(r rune, size int) bool {
	return r == utf8.RuneError && size <= 1 || r == 0x7f || r >= 0x80 && r < 0xa0
}

// textWriter writes "Label : value" blocks. Values are escaped with
// entry.Printable; errors are kept until Flush.
type textWriter struct {
	w *bufio.Writer
}

func newTextWriter(w io.Writer) *textWriter { return &textWriter{w: bufio.NewWriter(w)} }

const labelWidth = 17

func (t *textWriter) field(label, value string) {
	fmt.Fprintf(t.w, "%-*s: %s\n", labelWidth, label, entry.Printable(value))
}

func (t *textWriter) line(format string, args ...any) {
	fmt.Fprintf(t.w, format+"\n", args...)
}

func (t *textWriter) Flush() error { return t.w.Flush() }

func (t *textWriter) entry(e *adminv1.Entry) {
	t.field("Entry ID", e.GetId())
	if tm := e.GetTemplate(); tm != "" {
		t.field("Template", tm)
	} else {
		t.field("SPIFFE ID", e.GetSpiffeId())
	}
	t.field("Parent ID", e.GetParentId())
	for _, s := range e.GetSelectors() {
		t.field("Selector", s)
	}
	for _, n := range e.GetDnsNames() {
		t.field("DNS name", n)
	}
	for _, td := range e.GetFederatesWith() {
		t.field("Federates with", td)
	}
	t.field("X509-SVID TTL", formatTTLSeconds(e.GetX509SvidTtl()))
	t.field("JWT-SVID TTL", formatTTLSeconds(e.GetJwtSvidTtl()))
	t.field("Admin", fmt.Sprint(e.GetAdmin()))
	t.field("Downstream", fmt.Sprint(e.GetDownstream()))
	t.field("Created at", formatUnix(e.GetCreatedAt()))
	t.field("Revision", fmt.Sprint(e.GetRevision()))
}

func (t *textWriter) agent(a *adminv1.Agent) {
	t.field("SPIFFE ID", a.GetSpiffeId())
	t.field("Attestation type", a.GetAttestationType())
	t.field("Serial number", a.GetSerialNumber())
	t.field("SVID expires at", formatUnix(a.GetCertNotAfter()))
	t.field("Banned", fmt.Sprint(a.GetBanned()))
	t.field("Created at", formatUnix(a.GetCreatedAt()))
	t.field("Updated at", formatUnix(a.GetUpdatedAt()))
	for _, s := range a.GetNodeSelectors() {
		t.field("Node selector", s)
	}
}

// count writes "Found N things" with the right plural.
func (t *textWriter) count(n int, one, many string) {
	if n == 1 {
		t.line("Found 1 %s", one)
	} else {
		t.line("Found %d %s", n, many)
	}
}

// formatTTLSeconds writes a TTL in a form entry.ParseTTL reads back
// ("1h", "1h30m", "90s"), or "default" for 0.
func formatTTLSeconds(secs int64) string {
	if secs == 0 {
		return "default"
	}
	if secs < 0 || secs > int64(entry.MaxTTL/time.Second)*1000 {
		return fmt.Sprintf("%ds", secs)
	}
	s := (time.Duration(secs) * time.Second).String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// formatUnix writes Unix seconds as RFC 3339 in UTC, or "-" for 0.
func formatUnix(secs int64) string {
	if secs == 0 {
		return "-"
	}
	return time.Unix(secs, 0).UTC().Format(time.RFC3339)
}

// jsonTemplateEntry is a template entry as writ entry show prints it:
// the entry and what agents report it issues.
type jsonTemplateEntry struct {
	*jsonEntry
	Issued []jsonIssued `json:"issued"`
}

type jsonIssued struct {
	AgentID    string   `json:"agent_id"`
	SPIFFEIDs  []string `json:"spiffe_ids"`
	Count      int64    `json:"count"`
	ReportedAt int64    `json:"reported_at"` // Unix seconds
}

// writeTemplateEntry prints a template entry and, per agent connected to
// the server, the SPIFFE IDs it issues there.
func writeTemplateEntry(a *adminCmd, e *adminv1.Entry, issued []*adminv1.TemplateIssued) error {
	slices.SortFunc(issued, func(x, y *adminv1.TemplateIssued) int { return strings.Compare(x.GetAgentId(), y.GetAgentId()) })
	if a.format == jsonOutput {
		out := jsonTemplateEntry{jsonEntry: entryToJSON(e), Issued: []jsonIssued{}}
		for _, is := range issued {
			out.Issued = append(out.Issued, jsonIssued{AgentID: is.GetAgentId(), SPIFFEIDs: nonNil(is.GetSpiffeIds()), Count: is.GetCount(), ReportedAt: is.GetReportedAt()})
		}
		return writeJSON(a.cli.App.Writer, out)
	}
	t := newTextWriter(a.cli.App.Writer)
	t.entry(e)
	if len(issued) == 0 {
		t.field("Issued", "nothing reported by agents connected to this server")
	}
	for _, is := range issued {
		t.field("Issued on", fmt.Sprintf("%s: %d ID(s)", is.GetAgentId(), is.GetCount()))
		for _, id := range is.GetSpiffeIds() {
			t.field("  SPIFFE ID", id)
		}
		if n := int64(len(is.GetSpiffeIds())); n < is.GetCount() {
			t.field("  ...", fmt.Sprintf("%d more", is.GetCount()-n))
		}
	}
	return t.Flush()
}
