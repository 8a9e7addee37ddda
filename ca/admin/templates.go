package admin

import (
	"context"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

// TemplateReports gives what agents last reported their template
// entries issue (the node API keeps it in memory).
type TemplateReports interface {
	TemplateIssued(entryID string) []entry.Issued
}

// checkOverlaps refuses entries of batch that could issue the same
// SPIFFE ID as another entry to a different caller: a template whose
// pattern overlaps another template, or fills the ID of a plain entry,
// stored or in the batch (see entry.CheckTemplateOverlap). errs[i] is
// the refusal of batch[i], nil if none. Two creations racing on
// different servers are not serialized against each other.
func (s *Service) checkOverlaps(ctx context.Context, batch []*entry.Entry) ([]error, error) {
	errs := make([]error, len(batch))
	var templates []*entry.Entry
	for _, e := range batch {
		if e.Template != "" {
			templates = append(templates, e)
		}
	}
	var stored []*entry.Entry
	if len(templates) > 0 {
		// Templates are few and created rarely: compare with everything.
		all, err := s.store.ListEntries(ctx, datastore.EntryFilter{})
		if err != nil {
			return nil, err
		}
		stored = all
	}
	// A plain ID can only be filled by a template whose literal prefix
	// is one of its ancestors: look those up by SPIFFE ID (indexed).
	ancestors := make(map[spiffeid.ID][]*entry.Entry)
	for i, e := range batch {
		if e.Template != "" {
			for _, o := range stored {
				if o.ID == e.ID && e.ID != "" {
					continue
				}
				if err := entry.CheckTemplateOverlap(s.td, e, o); err != nil {
					errs[i] = invalidField("spiffe_id", err)
					break
				}
			}
		} else if len(stored) == 0 {
			segs := strings.Split(strings.TrimPrefix(e.SPIFFEID.Path(), "/"), "/")
			for n := 1; n < len(segs) && errs[i] == nil; n++ {
				a, err := spiffeid.FromSegments(s.td, segs[:n]...)
				if err != nil {
					break
				}
				found, ok := ancestors[a]
				if !ok {
					if found, err = s.store.ListEntries(ctx, datastore.EntryFilter{SPIFFEID: a}); err != nil {
						return nil, err
					}
					ancestors[a] = found
				}
				for _, o := range found {
					if o.ID == e.ID && e.ID != "" {
						continue
					}
					if err := entry.CheckTemplateOverlap(s.td, o, e); err != nil {
						errs[i] = invalidField("spiffe_id", err)
						break
					}
				}
			}
		} else {
			for _, o := range stored {
				if o.Template == "" || o.ID == e.ID && e.ID != "" {
					continue
				}
				if err := entry.CheckTemplateOverlap(s.td, o, e); err != nil {
					errs[i] = invalidField("spiffe_id", err)
					break
				}
			}
		}
	}
	// Within the batch.
	for i, e := range batch {
		for j, o := range batch {
			if i == j || errs[i] != nil || errs[j] != nil {
				continue
			}
			if e.Template != "" {
				if err := entry.CheckTemplateOverlap(s.td, e, o); err != nil {
					errs[max(i, j)] = invalidField("spiffe_id", err)
				}
			}
		}
	}
	return errs, nil
}

// maxIssuedListed bounds the IDs listed per agent.
const maxIssuedListed = 1000

// ListTemplateIssued lists what each agent connected to this server
// last reported the template entry issues.
func (es *entryService) ListTemplateIssued(ctx context.Context, req *adminv1.ListTemplateIssuedRequest) (*adminv1.ListTemplateIssuedResponse, error) {
	s := es.s
	if _, err := s.begin(ctx); err != nil {
		return nil, err
	}
	id, err := parseEntryID("id", req.GetId())
	if err != nil {
		return nil, err
	}
	e, err := s.store.FetchEntry(ctx, id)
	if err != nil {
		return nil, s.storeError(ctx, "fetch entry", err, msgEntryNotFound(id), "")
	}
	if e.Template == "" {
		return nil, status.Errorf(codes.FailedPrecondition, "entry %s is not a template entry", id)
	}
	resp := &adminv1.ListTemplateIssuedResponse{}
	if s.reports == nil {
		return resp, nil
	}
	for _, r := range s.reports.TemplateIssued(id) {
		ids := r.SPIFFEIDs
		if len(ids) > maxIssuedListed {
			ids = ids[:maxIssuedListed]
		}
		resp.Agents = append(resp.Agents, &adminv1.TemplateIssued{
			AgentId:    r.AgentID.String(),
			SpiffeIds:  ids,
			Count:      int64(r.Count),
			ReportedAt: unixSeconds(r.ReportedAt),
		})
	}
	return resp, nil
}

// overlapCandidates returns the stored entries that e, with its new
// SPIFFE ID or template, must not overlap: every entry if e is a
// template, else the entries named by an ancestor of its ID (templates
// with that literal prefix).
func (s *Service) overlapCandidates(ctx context.Context, e *entry.Entry) ([]*entry.Entry, error) {
	if e.Template != "" {
		return s.store.ListEntries(ctx, datastore.EntryFilter{})
	}
	var out []*entry.Entry
	segs := strings.Split(strings.TrimPrefix(e.SPIFFEID.Path(), "/"), "/")
	for n := 1; n < len(segs); n++ {
		a, err := spiffeid.FromSegments(s.td, segs[:n]...)
		if err != nil {
			break
		}
		found, err := s.store.ListEntries(ctx, datastore.EntryFilter{SPIFFEID: a})
		if err != nil {
			return nil, err
		}
		for _, o := range found {
			if o.Template != "" {
				out = append(out, o)
			}
		}
	}
	return out, nil
}
