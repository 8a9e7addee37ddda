package nodeapi

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/datastore"
)

// revocationState is the list of unexpired access-token revocations as
// Sync sends it. It is never modified once published.
type revocationState struct {
	// version counts the changes the index has seen, from 1.
	version uint64
	// items are the revocations sorted by key, each with the version
	// that added or last changed it.
	items []revocationItem
}

type revocationItem struct {
	key     string
	wire    *nodev1.Revocation
	version uint64
}

// refreshRevocations reads the unexpired revocations and publishes them
// if they changed. Revocations that expired meanwhile leave the list
// without a change: agents drop them on their own.
func (ix *index) refreshRevocations(ctx context.Context) error {
	rs, err := ix.store.ListRevocations(ctx, ix.clock.Now())
	if err != nil {
		return fmt.Errorf("list revocations: %w", err)
	}
	old := ix.revocations.Load()
	prev := make(map[string]revocationItem)
	var version uint64 = 1
	if old != nil {
		version = old.version + 1
		for _, it := range old.items {
			prev[it.key] = it
		}
	}
	st := &revocationState{version: version, items: make([]revocationItem, 0, len(rs))}
	changed := old == nil
	for _, r := range rs {
		w := revocationToWire(r)
		key := datastore.RevocationKey(r)
		if p, ok := prev[key]; ok && p.wire.GetRevokedAt() == w.GetRevokedAt() && p.wire.GetExpiresAt() == w.GetExpiresAt() {
			st.items = append(st.items, p)
			continue
		}
		st.items = append(st.items, revocationItem{key: key, wire: w, version: version})
		changed = true
	}
	if !changed {
		return nil
	}
	slices.SortFunc(st.items, func(a, b revocationItem) int { return strings.Compare(a.key, b.key) })
	ix.revocations.Store(st)
	return nil
}

// revocationToWire converts r: revoked_at rounded down and expires_at up
// to whole seconds, so that no token the revocation covers escapes it.
func revocationToWire(r *datastore.Revocation) *nodev1.Revocation {
	w := &nodev1.Revocation{Jti: r.JTI, ClientId: r.ClientID}
	if !r.RevokedAt.IsZero() {
		w.RevokedAt = r.RevokedAt.Unix()
	}
	w.ExpiresAt = r.ExpiresAt.Unix()
	if r.ExpiresAt.After(time.Unix(w.ExpiresAt, 0)) {
		w.ExpiresAt++
	}
	return w
}

// revocationsSince returns the revocations a stream that was sent the
// list at version sent has not seen (all of them if sent is 0).
func (st *revocationState) since(sent uint64) []*nodev1.Revocation {
	var out []*nodev1.Revocation
	for _, it := range st.items {
		if sent == 0 || it.version > sent {
			out = append(out, it.wire)
		}
	}
	return out
}
