package nodeapi

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/entry"
)

// Limits on template reports.
const (
	// MaxReportedTemplates bounds the templates of one report.
	MaxReportedTemplates = 1000
	// MaxReportedIDs bounds the SPIFFE IDs listed per template.
	MaxReportedIDs = 1000
	// maxReportAge: reports older than this are dropped when read (an
	// agent that went away stops reporting).
	maxReportAge = 10 * time.Minute
)

// templateReports holds each agent's latest report in memory, by agent
// and template entry ID. Nothing is stored: a restarted server learns
// again from the agents' next reports.
type templateReports struct {
	mu sync.Mutex // guards byAgent
	// byAgent holds each agent's latest report by template entry ID.
	byAgent map[spiffeid.ID]agentReport
}

type agentReport struct {
	at        time.Time
	templates map[string]entry.Issued
}

// ReportTemplates replaces the calling agent's report of what its
// template entries issue. Only the agent's own template entries are
// kept; IDs that do not conform to the template are dropped.
func (h *handler) ReportTemplates(ctx context.Context, req *nodev1.ReportTemplatesRequest) (*nodev1.ReportTemplatesResponse, error) {
	s := h.s
	c, err := s.callerFrom(ctx, true)
	if err != nil {
		return nil, err
	}
	if len(req.GetTemplates()) > MaxReportedTemplates {
		return nil, status.Errorf(codes.InvalidArgument, "too many templates: %d (at most %d)", len(req.GetTemplates()), MaxReportedTemplates)
	}
	now := s.clock.Now()
	rep := agentReport{at: now, templates: make(map[string]entry.Issued, len(req.GetTemplates()))}
	dropped := 0
	for _, t := range req.GetTemplates() {
		if len(t.GetSpiffeIds()) > MaxReportedIDs {
			return nil, status.Errorf(codes.InvalidArgument, "too many SPIFFE IDs for one template: %d (at most %d)", len(t.GetSpiffeIds()), MaxReportedIDs)
		}
		e := s.authorizedEntry(c, t.GetEntryId())
		if e == nil || e.Template == "" {
			dropped++
			continue
		}
		is := entry.Issued{AgentID: c.id, Count: int(max(t.GetCount(), int64(len(t.GetSpiffeIds())))), ReportedAt: now}
		for _, v := range t.GetSpiffeIds() {
			if _, ok := s.issuedID(e, v); ok {
				is.SPIFFEIDs = append(is.SPIFFEIDs, v)
			} else {
				dropped++
			}
		}
		rep.templates[e.ID] = is
	}
	if dropped > 0 {
		s.log.LogAttrs(ctx, slog.LevelWarn, "template report: dropped items that are not the agent's templates or IDs they fill", slog.String(KeySPIFFEID, c.id.String()), slog.Int("count", dropped))
	}
	s.reports.mu.Lock()
	defer s.reports.mu.Unlock()
	if s.reports.byAgent == nil {
		s.reports.byAgent = make(map[spiffeid.ID]agentReport)
	}
	if len(rep.templates) == 0 {
		delete(s.reports.byAgent, c.id)
	} else {
		s.reports.byAgent[c.id] = rep
	}
	return &nodev1.ReportTemplatesResponse{}, nil
}

// TemplateIssued returns what each agent last reported template entry
// entryID issues, in no particular order. Reports older than ten minutes
// are left out.
func (s *Service) TemplateIssued(entryID string) []entry.Issued {
	now := s.clock.Now()
	s.reports.mu.Lock()
	defer s.reports.mu.Unlock()
	var out []entry.Issued
	for id, r := range s.reports.byAgent {
		if now.Sub(r.at) > maxReportAge {
			delete(s.reports.byAgent, id)
			continue
		}
		if is, ok := r.templates[entryID]; ok {
			out = append(out, is)
		}
	}
	return out
}
