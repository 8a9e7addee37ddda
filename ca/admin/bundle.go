package admin

import (
	"context"
	"fmt"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
)

// bundleService serves adminv1.BundleService.
type bundleService struct {
	adminv1.UnimplementedBundleServiceServer
	s *Service
}

// GetBundle returns the server's own trust domain's bundle as a SPIFFE
// bundle document.
func (bs *bundleService) GetBundle(ctx context.Context, _ *adminv1.GetBundleRequest) (*adminv1.GetBundleResponse, error) {
	s := bs.s
	if _, err := s.begin(ctx); err != nil {
		return nil, err
	}
	b, err := s.store.FetchBundle(ctx, s.td)
	if err != nil {
		return nil, s.storeError(ctx, "fetch bundle", err, fmt.Sprintf("trust domain %q has no bundle yet", s.td.Name()), "")
	}
	doc, err := b.Marshal()
	if err != nil {
		return nil, s.internal(ctx, "marshal bundle", err)
	}
	seq, _ := b.SequenceNumber()
	return &adminv1.GetBundleResponse{
		TrustDomain:  s.td.Name(),
		SpiffeBundle: doc,
		Sequence:     seq,
	}, nil
}
