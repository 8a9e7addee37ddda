package ui

import (
	"bytes"
	"cmp"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

// maxShownEntries bounds the entries one page shows; the count says how
// many matched.
const maxShownEntries = 500

// view is what page.html renders.
type view struct {
	TrustDomain string
	ServerID    string
	Now         time.Time
	Timeline    timeline
	Agents      []agentRow
	Connected   int
	Query       string
	Entries     []entryRow
	EntryCount  int
	Matched     int
	Truncated   bool
	Audit       []AuditEvent
	HasAudit    bool
}

type agentRow struct {
	ID            string
	Attestation   string
	Banned        bool
	Streams       int
	HasStreams    bool
	LastRenewal   time.Time
	SVIDNotAfter  time.Time
	SVIDExpired   bool
	SVIDExpiresIn time.Duration
}

type entryRow struct {
	ID        string
	SPIFFEID  string
	ParentID  string
	Selectors string
	Flags     string
}

func (h *Handler) servePage(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	now := h.cfg.Clock.Now()
	keys, err := h.cfg.Store.ListCAKeys(ctx)
	if err != nil {
		h.fail(w, r, "list CA keys", err)
		return
	}
	agents, err := h.cfg.Store.ListAgents(ctx)
	if err != nil {
		h.fail(w, r, "list agents", err)
		return
	}
	entries, err := h.cfg.Store.ListEntries(ctx, datastore.EntryFilter{})
	if err != nil {
		h.fail(w, r, "list entries", err)
		return
	}
	v := view{TrustDomain: h.cfg.TrustDomain.Name(), ServerID: h.cfg.ServerID, Now: now, Timeline: buildTimeline(keys, now), EntryCount: len(entries)}
	v.HasAudit = h.cfg.Audit != nil
	if h.cfg.Audit != nil {
		v.Audit = h.cfg.Audit.Recent()
	}
	var connected map[string]int
	if h.cfg.Connected != nil {
		connected = map[string]int{}
		for id, n := range h.cfg.Connected() {
			connected[id.String()] = n
		}
	}
	for _, a := range agents {
		row := agentRow{ID: a.SPIFFEID.String(), Attestation: a.AttestationType, Banned: a.Banned, LastRenewal: a.UpdatedAt, SVIDNotAfter: a.CertNotAfter,
			SVIDExpired: !a.CertNotAfter.After(now), SVIDExpiresIn: a.CertNotAfter.Sub(now)}
		if connected != nil {
			row.HasStreams = true
			row.Streams = connected[row.ID]
			if row.Streams > 0 {
				v.Connected++
			}
		}
		v.Agents = append(v.Agents, row)
	}
	slices.SortFunc(v.Agents, func(a, b agentRow) int { return cmp.Compare(a.ID, b.ID) })

	v.Query = strings.TrimSpace(r.URL.Query().Get("q"))
	if len(v.Query) > 256 {
		v.Query = v.Query[:256]
	}
	for _, e := range entries {
		row := toEntryRow(e)
		if v.Query != "" && !row.matches(v.Query) {
			continue
		}
		v.Matched++
		if len(v.Entries) < maxShownEntries {
			v.Entries = append(v.Entries, row)
		}
	}
	v.Truncated = v.Matched > len(v.Entries)
	slices.SortFunc(v.Entries, func(a, b entryRow) int { return cmp.Or(cmp.Compare(a.SPIFFEID, b.SPIFFEID), cmp.Compare(a.ID, b.ID)) })

	var buf bytes.Buffer
	if err := page.Execute(&buf, v); err != nil {
		h.fail(w, r, "render", err)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(buf.Bytes())
}

func toEntryRow(e *entry.Entry) entryRow {
	sel := make([]string, len(e.Selectors))
	for i, s := range e.Selectors {
		sel[i] = s.String()
	}
	var flags []string
	if e.Admin {
		flags = append(flags, "admin")
	}
	if e.Downstream {
		flags = append(flags, "downstream")
	}
	return entryRow{ID: e.ID, SPIFFEID: e.SPIFFEID.String(), ParentID: e.ParentID.String(), Selectors: strings.Join(sel, " "), Flags: strings.Join(flags, ", ")}
}

// matches reports whether q occurs, ignoring case, in the entry's ID,
// SPIFFE ID, parent ID or selectors.
func (e entryRow) matches(q string) bool {
	q = strings.ToLower(q)
	for _, s := range []string{e.ID, e.SPIFFEID, e.ParentID, e.Selectors} {
		if strings.Contains(strings.ToLower(s), q) {
			return true
		}
	}
	return false
}

func (h *Handler) fail(w http.ResponseWriter, r *http.Request, op string, err error) {
	h.cfg.Logger.ErrorContext(r.Context(), "status page: "+op, "error", err.Error())
	http.Error(w, "the server could not read its state; see its log", http.StatusInternalServerError)
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// untilText is d as a short human duration: "in 3h12m" or "4m ago".
func untilText(d time.Duration) string {
	ago := d < 0
	if ago {
		d = -d
	}
	var s string
	switch {
	case d >= 48*time.Hour:
		s = fmt.Sprintf("%dd", int(d/(24*time.Hour)))
	case d >= time.Hour:
		s = fmt.Sprintf("%dh%02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	case d >= time.Minute:
		s = fmt.Sprintf("%dm", int(d/time.Minute))
	default:
		s = fmt.Sprintf("%ds", int(d/time.Second))
	}
	if ago {
		return s + " ago"
	}
	return "in " + s
}
