package admin

import (
	"context"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"writ.dev/writ/internal/logkey"
)

// auditMessage is the message of every audit record.
const auditMessage = "admin mutation"

// auditItem is the outcome for one item of a batch.
type auditItem struct {
	spiffeID string
	entryID  string
	code     codes.Code
}

// finish writes the audit log of a mutation once its handler has
// returned: one record for the call, or, if the call succeeded and the
// handler listed items, one per item.
func (s *Service) finish(ctx context.Context, c *call, err error) {
	if !c.rule.mutation && !c.rule.secret {
		return
	}
	if err != nil || len(c.items) == 0 {
		s.audit(ctx, c, status.Code(err), c.spiffeID, c.entryID)
		return
	}
	for _, it := range c.items {
		s.audit(ctx, c, it.code, it.spiffeID, it.entryID)
	}
}

// audit writes one audit record. The IDs it logs are parsed, canonical
// values, never raw input; it never logs selectors or tokens.
func (s *Service) audit(ctx context.Context, c *call, code codes.Code, spiffeID, entryID string) {
	attrs := append([]slog.Attr{slog.Bool(logkey.Audit, true)}, callerAttrs(c)...)
	if spiffeID != "" {
		attrs = append(attrs, slog.String(logkey.SPIFFEID, spiffeID))
	}
	if entryID != "" {
		attrs = append(attrs, slog.String(logkey.EntryID, entryID))
	}
	if c.keyKind != "" {
		attrs = append(attrs, slog.String(logkey.KeyKind, c.keyKind))
	}
	if c.keyID != "" {
		attrs = append(attrs, slog.String(logkey.KeyID, c.keyID))
	}
	if c.jti != "" {
		attrs = append(attrs, slog.String(logkey.JTI, c.jti))
	}
	if c.forced {
		attrs = append(attrs, slog.Bool(logkey.Forced, true))
	}
	attrs = append(attrs, slog.String(logkey.Code, code.String()))
	s.log.LogAttrs(ctx, slog.LevelInfo, auditMessage, attrs...)
}
