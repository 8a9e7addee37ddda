package admin

import (
	"context"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Keys of the admin API's log records. Audit records carry KeyAudit=true.
const (
	KeyAudit    = "audit"
	KeyMethod   = "method"
	KeyUID      = "uid"
	KeyPID      = "pid"
	KeySPIFFEID = "spiffe_id"
	KeyEntryID  = "entry_id"
	// KeyKeyKind, KeyKeyID and KeyForced describe CA key mutations.
	KeyKeyKind = "key_kind"
	KeyKeyID   = "key_id"
	KeyForced  = "forced"
	KeyCode    = "code"
	// KeyError holds the detail of an internal error.
	KeyError = "error"
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
	attrs := append([]slog.Attr{slog.Bool(KeyAudit, true)}, callerAttrs(c)...)
	if spiffeID != "" {
		attrs = append(attrs, slog.String(KeySPIFFEID, spiffeID))
	}
	if entryID != "" {
		attrs = append(attrs, slog.String(KeyEntryID, entryID))
	}
	if c.keyKind != "" {
		attrs = append(attrs, slog.String(KeyKeyKind, c.keyKind))
	}
	if c.keyID != "" {
		attrs = append(attrs, slog.String(KeyKeyID, c.keyID))
	}
	if c.forced {
		attrs = append(attrs, slog.Bool(KeyForced, true))
	}
	attrs = append(attrs, slog.String(KeyCode, code.String()))
	s.log.LogAttrs(ctx, slog.LevelInfo, auditMessage, attrs...)
}
