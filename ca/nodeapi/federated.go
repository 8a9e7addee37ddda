package nodeapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

// fedBundle is the bundle of one foreign trust domain as Sync sends it.
// It is never modified once in the index.
type fedBundle struct {
	// json is the bundle in SPIFFE bundle format.
	json []byte
	// version is the index's fedVersion when it was stored.
	version uint64
}

// loadFederated reads the bundles of every foreign trust domain.
func (ix *index) loadFederated(ctx context.Context) (map[spiffeid.TrustDomain][]byte, error) {
	bundles, err := ix.store.ListBundles(ctx)
	if err != nil {
		return nil, fmt.Errorf("list bundles: %w", err)
	}
	out := make(map[spiffeid.TrustDomain][]byte, len(bundles))
	for _, b := range bundles {
		if b.TrustDomain() == ix.td {
			continue
		}
		doc, err := b.Marshal()
		if err != nil {
			return nil, fmt.Errorf("marshal bundle of %s: %w", b.TrustDomain().Name(), err)
		}
		out[b.TrustDomain()] = doc
	}
	return out, nil
}

// fetchFederated reads the bundles of tds; a trust domain without one
// maps to nil.
func (ix *index) fetchFederated(ctx context.Context, tds map[spiffeid.TrustDomain]struct{}) (map[spiffeid.TrustDomain][]byte, error) {
	out := make(map[spiffeid.TrustDomain][]byte, len(tds))
	for td := range tds {
		b, err := ix.store.FetchBundle(ctx, td)
		switch {
		case errors.Is(err, datastore.ErrNotFound):
			out[td] = nil
			continue
		case err != nil:
			return nil, fmt.Errorf("fetch bundle of %s: %w", td.Name(), err)
		}
		if out[td], err = b.Marshal(); err != nil {
			return nil, fmt.Errorf("marshal bundle of %s: %w", td.Name(), err)
		}
	}
	return out, nil
}

// setAllFederatedLocked replaces every foreign bundle with docs.
func (ix *index) setAllFederatedLocked(docs map[spiffeid.TrustDomain][]byte) {
	for td := range ix.federated {
		if _, ok := docs[td]; !ok {
			docs[td] = nil
		}
	}
	ix.setFederatedLocked(docs)
}

// setFederatedLocked stores the foreign bundles in docs (nil: removed)
// and reports whether any changed.
func (ix *index) setFederatedLocked(docs map[spiffeid.TrustDomain][]byte) bool {
	changed := false
	for td, doc := range docs {
		old := ix.federated[td]
		switch {
		case doc == nil && old == nil, doc != nil && old != nil && bytes.Equal(doc, old.json):
			continue
		case doc == nil:
			delete(ix.federated, td)
		default:
			ix.federated[td] = &fedBundle{json: doc, version: ix.fedVersion + 1}
		}
		changed = true
	}
	if changed {
		ix.fedVersion++
	}
	return changed
}

// fedState is what one Sync stream has sent of the foreign bundles. It
// belongs to the stream's goroutine.
type fedState struct {
	// of maps the ID of each entry sent that federates with other trust
	// domains to those trust domains.
	of map[string][]spiffeid.TrustDomain
	// sent maps each trust domain whose bundle the agent has to the
	// version sent.
	sent map[spiffeid.TrustDomain]uint64
	// seen is the index's fedVersion at the last reconciliation; dirty
	// says the set of trust domains may have changed since.
	seen  uint64
	dirty bool
}

// entrySent records the trust domains an entry sent to the agent
// federates with.
func (f *fedState) entrySent(e *entry.Entry) {
	old, had := f.of[e.ID]
	if len(e.FederatesWith) == 0 {
		if had {
			delete(f.of, e.ID)
			f.dirty = true
		}
		return
	}
	if !had || !slices.Equal(old, e.FederatesWith) {
		if f.of == nil {
			f.of = make(map[string][]spiffeid.TrustDomain)
		}
		f.of[e.ID] = e.FederatesWith
		f.dirty = true
	}
}

// entryDeleted forgets an entry the agent no longer has.
func (f *fedState) entryDeleted(id string) {
	if _, ok := f.of[id]; ok {
		delete(f.of, id)
		f.dirty = true
	}
}

// reset forgets everything, before a full set.
func (f *fedState) reset() {
	*f = fedState{dirty: true}
}

// federatedUpdate returns the foreign bundles to send and the trust
// domains whose bundle the agent must drop, and records them as sent. In
// a full message (full) bundles is the complete set. ok is false when
// nothing changed.
func (ix *index) federatedUpdate(f *fedState, full bool) (bundles map[string][]byte, removed []string, ok bool) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	if !full && !f.dirty && f.seen == ix.fedVersion {
		return nil, nil, false
	}
	sent := make(map[spiffeid.TrustDomain]uint64, len(f.sent))
	for _, tds := range f.of {
		for _, td := range tds {
			if _, done := sent[td]; done {
				continue
			}
			fb := ix.federated[td]
			if fb == nil {
				continue
			}
			sent[td] = fb.version
			if v, had := f.sent[td]; full || !had || v != fb.version {
				if bundles == nil {
					bundles = make(map[string][]byte)
				}
				bundles[td.Name()] = fb.json
			}
		}
	}
	if !full {
		for td := range f.sent {
			if _, kept := sent[td]; !kept {
				removed = append(removed, td.Name())
			}
		}
		slices.Sort(removed)
	}
	f.sent, f.seen, f.dirty = sent, ix.fedVersion, false
	return bundles, removed, full || len(bundles) > 0 || len(removed) > 0
}

// setFederated puts the foreign bundles of an update in msg.
func setFederated(msg *nodev1.SyncResponse, bundles map[string][]byte, removed []string) int {
	msg.FederatedBundles, msg.RemovedFederatedBundles = bundles, removed
	n := 0
	for k, v := range bundles {
		n += len(k) + len(v)
	}
	for _, r := range removed {
		n += len(r)
	}
	return n
}
