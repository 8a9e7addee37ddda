package admin

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

const (
	msgDuplicateEntry   = "an entry with the same spiffe_id, parent_id and selectors already exists"
	msgDuplicateEntryID = "an entry with this id, or with the same spiffe_id, parent_id and selectors, already exists"
)

func msgEntryNotFound(id string) string { return fmt.Sprintf("entry %q not found", id) }

// entryService serves adminv1.EntryService.
type entryService struct {
	adminv1.UnimplementedEntryServiceServer
	s *Service
}

// BatchCreateEntry creates the valid entries of the request in one store
// transaction and reports each entry's outcome in order. Only a request
// that is too large, or a failure of the whole batch, fails the call.
func (es *entryService) BatchCreateEntry(ctx context.Context, req *adminv1.BatchCreateEntryRequest) (*adminv1.BatchCreateEntryResponse, error) {
	s := es.s
	c, err := s.begin(ctx)
	if err != nil {
		return nil, err
	}
	in := req.GetEntries()
	if len(in) > MaxBatchCreate {
		return nil, invalidf("batch has %d entries; at most %d are allowed per request", len(in), MaxBatchCreate)
	}
	results := make([]*adminv1.EntryResult, len(in))
	items := make([]auditItem, len(in))
	var (
		valid []*entry.Entry
		index []int // index[j] is the request position of valid[j]
	)
	now := s.clock.Now()
	known := s.knownTrustDomains(ctx)
	for i, w := range in {
		e, err := s.entryFromWire(w)
		if err == nil {
			if err = checkFederatesWith(e, known); err != nil && status.Code(err) == codes.Unknown {
				return nil, s.internal(ctx, "check federated trust domains", err)
			}
		}
		if err != nil {
			results[i] = &adminv1.EntryResult{Status: wireStatus(err)}
			items[i] = auditItem{code: status.Code(err)}
			continue
		}
		e.CreatedAt = now
		valid = append(valid, e)
		index = append(index, i)
	}
	if len(valid) > 0 {
		overlaps, err := s.checkOverlaps(ctx, valid)
		if err != nil {
			return nil, s.internal(ctx, "check template overlaps", err)
		}
		keep, keepIndex := valid[:0:0], index[:0:0]
		for j, oerr := range overlaps {
			if oerr != nil {
				results[index[j]] = &adminv1.EntryResult{Status: wireStatus(oerr)}
				items[index[j]] = auditItem{spiffeID: valid[j].SPIFFEID.String(), code: status.Code(oerr)}
				continue
			}
			keep, keepIndex = append(keep, valid[j]), append(keepIndex, index[j])
		}
		valid, index = keep, keepIndex
	}
	if len(valid) > 0 {
		created, err := s.store.CreateEntries(ctx, valid)
		if err != nil {
			return nil, s.internal(ctx, "create entries", err)
		}
		if len(created) != len(valid) {
			return nil, s.internal(ctx, "create entries", errStoreResult(len(created), len(valid)))
		}
		for j, r := range created {
			i := index[j]
			item := auditItem{spiffeID: valid[j].SPIFFEID.String(), entryID: valid[j].ID}
			switch {
			case r.Err == nil && r.Entry != nil:
				results[i] = &adminv1.EntryResult{Status: &adminv1.Status{}, Entry: adminv1.EntryFromDomain(r.Entry)}
				item.entryID = r.Entry.ID
			case errors.Is(r.Err, datastore.ErrAlreadyExists):
				msg := msgDuplicateEntry
				if valid[j].ID != "" {
					msg = msgDuplicateEntryID
				}
				results[i] = &adminv1.EntryResult{Status: wireStatus(status.Error(codes.AlreadyExists, msg))}
			default:
				if r.Err == nil {
					r.Err = errors.New("store returned neither an entry nor an error")
				}
				results[i] = &adminv1.EntryResult{Status: wireStatus(s.internal(ctx, "create entry", r.Err))}
			}
			item.code = codes.Code(results[i].Status.Code)
			items[i] = item
		}
	}
	c.items = items
	return &adminv1.BatchCreateEntryResponse{Results: results}, nil
}

// wireStatus converts a status error (nil for OK) to a batch item status.
func wireStatus(err error) *adminv1.Status {
	st := status.Convert(err)
	return &adminv1.Status{Code: int32(st.Code()), Message: st.Message()}
}

func (es *entryService) GetEntry(ctx context.Context, req *adminv1.GetEntryRequest) (*adminv1.Entry, error) {
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
	return adminv1.EntryFromDomain(e), nil
}

// ListEntries streams the entries that match every given filter field,
// ListEntriesPageSize to a message. It sends nothing if none match.
func (es *entryService) ListEntries(req *adminv1.ListEntriesRequest, stream grpc.ServerStreamingServer[adminv1.ListEntriesResponse]) error {
	s := es.s
	ctx := stream.Context()
	if _, err := s.begin(ctx); err != nil {
		return err
	}
	var (
		f   datastore.EntryFilter
		err error
	)
	if v := req.GetSpiffeId(); v != "" {
		if f.SPIFFEID, err = s.parseID("spiffe_id", v); err != nil {
			return err
		}
	}
	if v := req.GetParentId(); v != "" {
		if f.ParentID, err = s.parseID("parent_id", v); err != nil {
			return err
		}
	}
	if len(req.GetSelectors()) > 0 {
		if f.Selectors, err = parseSelectors("selectors", req.GetSelectors()); err != nil {
			return err
		}
	}
	entries, err := s.store.ListEntries(ctx, f)
	if err != nil {
		return s.internal(ctx, "list entries", err)
	}
	for start := 0; start < len(entries); start += ListEntriesPageSize {
		page := entries[start:min(start+ListEntriesPageSize, len(entries))]
		resp := &adminv1.ListEntriesResponse{Entries: make([]*adminv1.Entry, len(page))}
		for i, e := range page {
			resp.Entries[i] = adminv1.EntryFromDomain(e)
		}
		if err := stream.Send(resp); err != nil {
			// The client has gone or the stream broke; gRPC already knows.
			return err
		}
	}
	return nil
}

// UpdateEntry sets the fields named in update_mask from the request and
// keeps the others. The result must be a valid entry, as on create.
func (es *entryService) UpdateEntry(ctx context.Context, req *adminv1.UpdateEntryRequest) (*adminv1.Entry, error) {
	s := es.s
	c, err := s.begin(ctx)
	if err != nil {
		return nil, err
	}
	w := req.GetEntry()
	if w == nil {
		return nil, invalidf("entry is missing")
	}
	id, err := parseEntryID("entry.id", w.GetId())
	if err != nil {
		return nil, err
	}
	c.entryID = id
	fields, err := parseUpdateMask(req.GetUpdateMask())
	if err != nil {
		return nil, err
	}
	// Check the new values before touching the store.
	var patch entry.Entry
	for _, f := range fields {
		if err := f.parse(s, &patch, w); err != nil {
			return nil, err
		}
	}
	// A new SPIFFE ID or template must not overlap another entry's; new
	// federated trust domains must be known.
	var others []*entry.Entry
	for _, f := range fields {
		if f.name == fieldFederatesWith {
			if err := checkFederatesWith(&patch, s.knownTrustDomains(ctx)); err != nil {
				if status.Code(err) == codes.Unknown {
					return nil, s.internal(ctx, "check federated trust domains", err)
				}
				return nil, err
			}
		}
		if f.name == fieldSPIFFEID {
			if others, err = s.overlapCandidates(ctx, &patch); err != nil {
				return nil, s.internal(ctx, "check template overlaps", err)
			}
		}
	}
	// The masked fields are merged into the entry as stored inside the
	// store's read-modify-write, so that a concurrent update of other
	// fields is kept. checkErr is the refusal of the merged entry.
	var checkErr error
	updated, err := s.store.UpdateEntry(ctx, id, func(e *entry.Entry) error {
		for _, f := range fields {
			f.copy(e, &patch)
		}
		if checkErr = s.checkEntry(e); checkErr != nil {
			return checkErr
		}
		for _, o := range others {
			if o.ID == e.ID {
				continue
			}
			if checkErr = entry.CheckTemplateOverlap(s.td, e, o); checkErr == nil {
				checkErr = entry.CheckTemplateOverlap(s.td, o, e)
			}
			if checkErr != nil {
				checkErr = invalidField("spiffe_id", checkErr)
				return checkErr
			}
		}
		c.spiffeID = e.SPIFFEID.String()
		return nil
	})
	if checkErr != nil {
		return nil, checkErr
	}
	if err != nil {
		return nil, s.storeError(ctx, "update entry", err, msgEntryNotFound(id), msgDuplicateEntry)
	}
	return adminv1.EntryFromDomain(updated), nil
}

// DeleteEntry deletes the entry and returns it as it was.
func (es *entryService) DeleteEntry(ctx context.Context, req *adminv1.DeleteEntryRequest) (*adminv1.Entry, error) {
	s := es.s
	c, err := s.begin(ctx)
	if err != nil {
		return nil, err
	}
	id, err := parseEntryID("id", req.GetId())
	if err != nil {
		return nil, err
	}
	c.entryID = id
	e, err := s.store.DeleteEntry(ctx, id)
	if err != nil {
		return nil, s.storeError(ctx, "delete entry", err, msgEntryNotFound(id), "")
	}
	c.spiffeID = e.SPIFFEID.String()
	return adminv1.EntryFromDomain(e), nil
}
