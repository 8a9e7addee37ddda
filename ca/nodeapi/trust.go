package nodeapi

import (
	"slices"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
)

// LocalX509Trust returns the local trust bundle as the node API last read
// it (nil if the store has none) and the subject key IDs, lowercase hex,
// of the tainted X.509 CAs. Both are kept current from the store's change
// feed, like everything the node API verifies agents with, so that other
// mTLS endpoints of the server (the remote admin API) trust exactly what
// it trusts. The bundle must not be modified.
func (s *Service) LocalX509Trust() (*spiffebundle.Bundle, []string) {
	b := s.idx.bundle.Load()
	if b == nil || b.bundle == nil {
		return nil, nil
	}
	var tainted []string
	if b.tainted != nil {
		tainted = slices.Clone(b.tainted.X509AuthorityIds)
	}
	return b.bundle, tainted
}
