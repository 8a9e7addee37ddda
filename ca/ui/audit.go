package ui

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// AuditEvent is one audit record as the page shows it.
type AuditEvent struct {
	Time    time.Time
	Message string
	// Attrs are the record's attributes as key=value, in order, without
	// the audit marker.
	Attrs []string
}

// AuditLog keeps the most recent audit records in memory for the page.
type AuditLog struct {
	mu     sync.Mutex
	events []AuditEvent // ring buffer
	next   int
	full   bool
}

// NewAuditLog returns a log that keeps the last n records (n > 0).
func NewAuditLog(n int) *AuditLog {
	return &AuditLog{events: make([]AuditEvent, max(n, 1))}
}

func (l *AuditLog) add(e AuditEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events[l.next] = e
	l.next = (l.next + 1) % len(l.events)
	if l.next == 0 {
		l.full = true
	}
}

// Recent returns the kept records, newest first.
func (l *AuditLog) Recent() []AuditEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []AuditEvent
	if l.full {
		out = append(out, l.events[l.next:]...)
	}
	out = append(out, l.events[:l.next]...)
	slices.Reverse(out)
	return out
}

// Handler returns a slog.Handler that passes every record to next and
// also keeps, in l, those whose attribute auditKey is true.
func (l *AuditLog) Handler(next slog.Handler, auditKey string) slog.Handler {
	return &auditHandler{next: next, log: l, key: auditKey}
}

type auditHandler struct {
	next  slog.Handler
	log   *AuditLog
	key   string
	attrs []slog.Attr // from WithAttrs (no groups: the admin API uses none)
	group bool        // set once WithGroup was called: records are not audit records of the admin API
}

func (h *auditHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.next.Enabled(ctx, level) || level >= slog.LevelInfo
}

func (h *auditHandler) Handle(ctx context.Context, r slog.Record) error {
	if !h.group {
		h.keep(r)
	}
	if !h.next.Enabled(ctx, r.Level) {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h *auditHandler) keep(r slog.Record) {
	audit := false
	var attrs []string
	visit := func(a slog.Attr) bool {
		if a.Key == h.key {
			audit = a.Value.Kind() == slog.KindBool && a.Value.Bool()
			return true
		}
		attrs = append(attrs, a.Key+"="+a.Value.String())
		return true
	}
	for _, a := range h.attrs {
		visit(a)
	}
	r.Attrs(visit)
	if audit {
		h.log.add(AuditEvent{Time: r.Time, Message: r.Message, Attrs: attrs})
	}
}

func (h *auditHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.next = h.next.WithAttrs(attrs)
	c.attrs = append(slices.Clip(h.attrs), attrs...)
	return &c
}

func (h *auditHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.next = h.next.WithGroup(name)
	c.group = c.group || name != ""
	return &c
}
