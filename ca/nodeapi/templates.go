package nodeapi

import (
	"context"
	"log/slog"
	"sync"
	"writ.dev/writ/internal/logkey"

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
)

// templateReports holds each agent's latest report in memory, by agent
// and template entry ID. Nothing is stored: a restarted server learns
// again from the agents' next reports.
// A report lasts while the agent has a Sync stream open to this server.
type templateReports struct {
	mu sync.Mutex // guards byAgent and streams
	// byAgent holds each agent's latest report by template entry ID.
	byAgent map[spiffeid.ID]agentReport
	// streams counts each agent's open Sync streams.
	streams map[spiffeid.ID]int
}

// streamOpened counts a Sync stream of agent id; the returned function
// uncounts it, dropping the agent's report after its last stream.
func (r *templateReports) streamOpened(id spiffeid.ID) func() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.streams == nil {
		r.streams = make(map[spiffeid.ID]int)
	}
	r.streams[id]++
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.streams[id]--; r.streams[id] <= 0 {
			delete(r.streams, id)
			delete(r.byAgent, id)
		}
	}
}

type agentReport struct {
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
	rep := agentReport{templates: make(map[string]entry.Issued, len(req.GetTemplates()))}
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
			if _, ok := s.issuedID(c, e, v); ok {
				is.SPIFFEIDs = append(is.SPIFFEIDs, v)
			} else {
				dropped++
			}
		}
		rep.templates[e.ID] = is
	}
	if dropped > 0 {
		s.log.LogAttrs(ctx, slog.LevelWarn, "template report: dropped items that are not the agent's templates or IDs they fill", slog.String(logkey.SPIFFEID, c.id.String()), slog.Int("count", dropped))
	}
	s.reports.mu.Lock()
	defer s.reports.mu.Unlock()
	if s.reports.byAgent == nil {
		s.reports.byAgent = make(map[spiffeid.ID]agentReport)
	}
	if len(rep.templates) == 0 || s.reports.streams[c.id] == 0 {
		delete(s.reports.byAgent, c.id)
	} else {
		s.reports.byAgent[c.id] = rep
	}
	return &nodev1.ReportTemplatesResponse{}, nil
}

// TemplateIssued returns what each agent with a Sync stream open to
// this server last reported template entry entryID issues, in no
// particular order.
func (s *Service) TemplateIssued(entryID string) []entry.Issued {
	s.reports.mu.Lock()
	defer s.reports.mu.Unlock()
	var out []entry.Issued
	for _, r := range s.reports.byAgent {
		if is, ok := r.templates[entryID]; ok {
			out = append(out, is)
		}
	}
	return out
}
