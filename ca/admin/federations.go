package admin

import (
	"context"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/federation"
)

// federationService serves adminv1.FederationService.
type federationService struct {
	adminv1.UnimplementedFederationServiceServer
	s *Service
}

// federationFromWire parses and checks a relationship from a request.
func (s *Service) federationFromWire(req *adminv1.Federation) (*datastore.Federation, error) {
	td, err := parseTrustDomain(req.GetTrustDomain())
	if err != nil {
		return nil, err
	}
	if td == s.td {
		return nil, invalidf("%s is this server's own trust domain", td.Name())
	}
	r := &datastore.Federation{TrustDomain: td, BundleEndpointURL: req.GetBundleEndpointUrl(), Profile: req.GetProfile()}
	if id := req.GetEndpointSpiffeId(); id != "" {
		if r.EndpointSPIFFEID, err = spiffeid.FromString(id); err != nil {
			return nil, invalidField("endpoint SPIFFE ID", err)
		}
		if r.EndpointSPIFFEID.TrustDomain() != td {
			return nil, invalidf("endpoint SPIFFE ID %s is not in trust domain %s", r.EndpointSPIFFEID, td.Name())
		}
	}
	if err := datastore.CheckFederation(r); err != nil {
		return nil, invalidf("%s", entry.Printable(err.Error()))
	}
	return r, nil
}

func (s *Service) federationToWire(r *datastore.Federation) *adminv1.Federation {
	w := &adminv1.Federation{
		TrustDomain:       r.TrustDomain.Name(),
		BundleEndpointUrl: r.BundleEndpointURL,
		Profile:           r.Profile,
		CreatedAt:         unixSeconds(r.CreatedAt),
		UpdatedAt:         unixSeconds(r.UpdatedAt),
	}
	if !r.EndpointSPIFFEID.IsZero() {
		w.EndpointSpiffeId = r.EndpointSPIFFEID.String()
	}
	if s.federation != nil {
		if st, ok := s.federation.Status(r.TrustDomain); ok {
			w.Status = &adminv1.FederationStatus{LastAttempt: unixSeconds(st.LastAttempt), LastSuccess: unixSeconds(st.LastSuccess),
				LastError: st.LastError, BundleSequence: st.Sequence, NextFetch: unixSeconds(st.NextFetch)}
		}
	}
	return w
}

// findFederation returns the relationship with td, or NotFound.
func (s *Service) findFederation(ctx context.Context, name string) (*datastore.Federation, error) {
	td, err := parseTrustDomain(name)
	if err != nil {
		return nil, err
	}
	all, err := s.store.ListFederations(ctx)
	if err != nil {
		return nil, s.internal(ctx, "list federations", err)
	}
	for _, r := range all {
		if r.TrustDomain == td {
			return r, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "no federation relationship with %s", td.Name())
}

// storeTrustBundle stores the bootstrap bundle of a request, if any.
func (s *Service) storeTrustBundle(ctx context.Context, td spiffeid.TrustDomain, doc []byte) error {
	if len(doc) == 0 {
		return nil
	}
	if len(doc) > maxFederatedBundle {
		return invalidf("trust bundle of %d bytes exceeds %d", len(doc), maxFederatedBundle)
	}
	b, err := spiffebundle.Parse(td, doc)
	if err != nil {
		return invalidf("trust bundle of %s: %s", td.Name(), entry.Printable(err.Error()))
	}
	if err := federation.CheckBundle(td, b); err != nil {
		return invalidf("trust bundle: %s", entry.Printable(err.Error()))
	}
	if _, err := s.store.UpdateBundle(ctx, td, func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error) { return b, nil }); err != nil {
		return s.internal(ctx, "store trust bundle", err)
	}
	return nil
}

// CreateFederation creates a relationship.
func (fs *federationService) CreateFederation(ctx context.Context, req *adminv1.Federation) (*adminv1.Federation, error) {
	s := fs.s
	c, err := s.begin(ctx)
	if err != nil {
		return nil, err
	}
	r, err := s.federationFromWire(req)
	if err != nil {
		return nil, err
	}
	c.spiffeID = r.TrustDomain.IDString()
	if _, err := s.findFederation(ctx, r.TrustDomain.Name()); err == nil {
		return nil, status.Errorf(codes.AlreadyExists, "a federation relationship with %s exists; update it", r.TrustDomain.Name())
	} else if status.Code(err) != codes.NotFound {
		return nil, err
	}
	if err := s.storeTrustBundle(ctx, r.TrustDomain, req.GetTrustBundle()); err != nil {
		return nil, err
	}
	if r.Profile == datastore.ProfileHTTPSSPIFFE {
		if _, err := s.store.FetchBundle(ctx, r.TrustDomain); errors.Is(err, datastore.ErrNotFound) {
			return nil, invalidf("the https_spiffe profile needs a trust bundle of %s to authenticate its endpoint: give one", r.TrustDomain.Name())
		} else if err != nil {
			return nil, s.internal(ctx, "fetch bundle", err)
		}
	}
	now := s.clock.Now()
	r.CreatedAt, r.UpdatedAt = now, now
	if err := s.store.PutFederation(ctx, r); err != nil {
		return nil, s.internal(ctx, "put federation", err)
	}
	if s.federation != nil {
		s.federation.Kick()
	}
	return s.federationToWire(r), nil
}

// UpdateFederation replaces a relationship's endpoint settings.
func (fs *federationService) UpdateFederation(ctx context.Context, req *adminv1.Federation) (*adminv1.Federation, error) {
	s := fs.s
	c, err := s.begin(ctx)
	if err != nil {
		return nil, err
	}
	r, err := s.federationFromWire(req)
	if err != nil {
		return nil, err
	}
	c.spiffeID = r.TrustDomain.IDString()
	old, err := s.findFederation(ctx, r.TrustDomain.Name())
	if err != nil {
		return nil, err
	}
	if err := s.storeTrustBundle(ctx, r.TrustDomain, req.GetTrustBundle()); err != nil {
		return nil, err
	}
	r.CreatedAt, r.UpdatedAt = old.CreatedAt, s.clock.Now()
	if err := s.store.PutFederation(ctx, r); err != nil {
		return nil, s.internal(ctx, "put federation", err)
	}
	if s.federation != nil {
		s.federation.Kick()
	}
	return s.federationToWire(r), nil
}

// GetFederation returns one relationship.
func (fs *federationService) GetFederation(ctx context.Context, req *adminv1.GetFederationRequest) (*adminv1.Federation, error) {
	s := fs.s
	if _, err := s.begin(ctx); err != nil {
		return nil, err
	}
	r, err := s.findFederation(ctx, req.GetTrustDomain())
	if err != nil {
		return nil, err
	}
	return s.federationToWire(r), nil
}

// ListFederations lists the relationships.
func (fs *federationService) ListFederations(ctx context.Context, _ *adminv1.ListFederationsRequest) (*adminv1.ListFederationsResponse, error) {
	s := fs.s
	if _, err := s.begin(ctx); err != nil {
		return nil, err
	}
	all, err := s.store.ListFederations(ctx)
	if err != nil {
		return nil, s.internal(ctx, "list federations", err)
	}
	resp := &adminv1.ListFederationsResponse{}
	for _, r := range all {
		resp.Federations = append(resp.Federations, s.federationToWire(r))
	}
	return resp, nil
}

// DeleteFederation deletes a relationship.
func (fs *federationService) DeleteFederation(ctx context.Context, req *adminv1.GetFederationRequest) (*adminv1.Federation, error) {
	s := fs.s
	c, err := s.begin(ctx)
	if err != nil {
		return nil, err
	}
	r, err := s.findFederation(ctx, req.GetTrustDomain())
	if err != nil {
		return nil, err
	}
	c.spiffeID = r.TrustDomain.IDString()
	if err := s.store.DeleteFederation(ctx, r.TrustDomain); err != nil {
		return nil, s.storeError(ctx, "delete federation", err, fmt.Sprintf("no federation relationship with %s", r.TrustDomain.Name()), "")
	}
	return s.federationToWire(r), nil
}

// RefreshFederation fetches the trust domain's bundle now.
func (fs *federationService) RefreshFederation(ctx context.Context, req *adminv1.GetFederationRequest) (*adminv1.Federation, error) {
	s := fs.s
	c, err := s.begin(ctx)
	if err != nil {
		return nil, err
	}
	r, err := s.findFederation(ctx, req.GetTrustDomain())
	if err != nil {
		return nil, err
	}
	c.spiffeID = r.TrustDomain.IDString()
	if s.federation == nil {
		return nil, status.Error(codes.Unavailable, "this server does not fetch federated bundles")
	}
	if err := s.federation.Refresh(ctx, r); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "bundle of %s not refreshed (the last good one is kept): %s", r.TrustDomain.Name(), entry.Printable(err.Error()))
	}
	return s.federationToWire(r), nil
}
