package admin

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/federation"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
)

// bundleService serves adminv1.BundleService.
type bundleService struct {
	adminv1.UnimplementedBundleServiceServer
	s *Service
}

// GetBundle returns the server's own trust domain's bundle as a SPIFFE
// bundle document.
func (bs *bundleService) GetBundle(ctx context.Context, req *adminv1.GetBundleRequest) (*adminv1.GetBundleResponse, error) {
	s := bs.s
	if _, err := s.begin(ctx); err != nil {
		return nil, err
	}
	td := s.td
	if req.GetTrustDomain() != "" {
		var err error
		if td, err = parseTrustDomain(req.GetTrustDomain()); err != nil {
			return nil, err
		}
	}
	b, err := s.store.FetchBundle(ctx, td)
	if err != nil {
		return nil, s.storeError(ctx, "fetch bundle", err, fmt.Sprintf("trust domain %q has no bundle", td.Name()), "")
	}
	return s.bundleToWire(ctx, b)
}

func (s *Service) bundleToWire(ctx context.Context, b *spiffebundle.Bundle) (*adminv1.GetBundleResponse, error) {
	doc, err := b.Marshal()
	if err != nil {
		return nil, s.internal(ctx, "marshal bundle", err)
	}
	seq, _ := b.SequenceNumber()
	return &adminv1.GetBundleResponse{
		TrustDomain:  b.TrustDomain().Name(),
		SpiffeBundle: doc,
		Sequence:     seq,
	}, nil
}

// maxFederatedBundle bounds a federated bundle document.
const maxFederatedBundle = 1 << 20

// parseTrustDomain parses a trust domain name given by a caller.
func parseTrustDomain(name string) (spiffeid.TrustDomain, error) {
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil || td.Name() != name {
		return spiffeid.TrustDomain{}, invalidf("invalid trust domain %q: lowercase letters, digits, '.', '-' and '_' only, no scheme", entry.Printable(name))
	}
	return td, nil
}

// SetFederatedBundle stores another trust domain's bundle. The sequence
// number, if the document has none, continues from the stored one.
func (bs *bundleService) SetFederatedBundle(ctx context.Context, req *adminv1.SetFederatedBundleRequest) (*adminv1.GetBundleResponse, error) {
	s := bs.s
	c, err := s.begin(ctx)
	if err != nil {
		return nil, err
	}
	td, err := parseTrustDomain(req.GetTrustDomain())
	if err != nil {
		return nil, err
	}
	c.spiffeID = td.IDString()
	if td == s.td {
		return nil, invalidf("%s is this server's own trust domain: its bundle is managed by the CA", td.Name())
	}
	if len(req.GetSpiffeBundle()) > maxFederatedBundle {
		return nil, invalidf("bundle of %d bytes exceeds %d", len(req.GetSpiffeBundle()), maxFederatedBundle)
	}
	b, err := spiffebundle.Parse(td, req.GetSpiffeBundle())
	if err != nil {
		return nil, invalidf("bundle of %s: %s", td.Name(), entry.Printable(err.Error()))
	}
	if err := federation.CheckBundle(td, b); err != nil {
		return nil, invalidf("%s", entry.Printable(err.Error()))
	}
	stored, err := s.store.UpdateBundle(ctx, td, func(old *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
		nb := b.Clone()
		if _, ok := nb.SequenceNumber(); !ok && old != nil {
			seq, _ := old.SequenceNumber()
			nb.SetSequenceNumber(seq + 1)
		}
		return nb, nil
	})
	if err != nil {
		return nil, s.internal(ctx, "set federated bundle", err)
	}
	return s.bundleToWire(ctx, stored)
}

// ListFederatedBundles lists the bundles of other trust domains.
func (bs *bundleService) ListFederatedBundles(ctx context.Context, _ *adminv1.ListFederatedBundlesRequest) (*adminv1.ListFederatedBundlesResponse, error) {
	s := bs.s
	if _, err := s.begin(ctx); err != nil {
		return nil, err
	}
	all, err := s.store.ListBundles(ctx)
	if err != nil {
		return nil, s.internal(ctx, "list bundles", err)
	}
	resp := &adminv1.ListFederatedBundlesResponse{}
	for _, b := range all {
		if b.TrustDomain() == s.td {
			continue
		}
		w, err := s.bundleToWire(ctx, b)
		if err != nil {
			return nil, err
		}
		resp.Bundles = append(resp.Bundles, w)
	}
	slices.SortFunc(resp.Bundles, func(a, b *adminv1.GetBundleResponse) int {
		return strings.Compare(a.GetTrustDomain(), b.GetTrustDomain())
	})
	return resp, nil
}

// DeleteFederatedBundle deletes another trust domain's bundle.
func (bs *bundleService) DeleteFederatedBundle(ctx context.Context, req *adminv1.DeleteFederatedBundleRequest) (*adminv1.DeleteFederatedBundleResponse, error) {
	s := bs.s
	c, err := s.begin(ctx)
	if err != nil {
		return nil, err
	}
	td, err := parseTrustDomain(req.GetTrustDomain())
	if err != nil {
		return nil, err
	}
	c.spiffeID = td.IDString()
	if td == s.td {
		return nil, invalidf("%s is this server's own trust domain: its bundle cannot be deleted", td.Name())
	}
	if err := s.store.DeleteBundle(ctx, td); err != nil {
		return nil, s.storeError(ctx, "delete bundle", err, fmt.Sprintf("trust domain %q has no bundle", td.Name()), "")
	}
	return &adminv1.DeleteFederatedBundleResponse{}, nil
}
