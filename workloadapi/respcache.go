package workloadapi

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"writ.dev/writ/agent/svidcache"
)

// encodedMsg is a response marshaled once and sent as is to every caller
// it is for. It is immutable.
type encodedMsg struct{ b []byte }

// codec is gRPC's proto codec, except that it sends an *encodedMsg's
// bytes without copying them. They are never freed or written to (a
// SliceBuffer's Free does nothing), so one message can be in flight on
// many streams at once.
type codec struct{}

var protoCodec = encoding.GetCodecV2(grpcproto.Name)

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	if m, ok := v.(*encodedMsg); ok {
		return mem.BufferSlice{mem.SliceBuffer(m.b)}, nil
	}
	return protoCodec.Marshal(v)
}

func (codec) Unmarshal(data mem.BufferSlice, v any) error { return protoCodec.Unmarshal(data, v) }

func (codec) Name() string { return grpcproto.Name }

// bundleResp is what the Workload API sends about one version of the
// local bundle, computed once.
type bundleResp struct {
	bundle *spiffebundle.Bundle
	// x509DER is the X.509 authorities, concatenated DER: the bundle
	// field of each X509SVID message.
	x509DER []byte
	x509Msg *encodedMsg // X509BundlesResponse
	jwtMsg  *encodedMsg // JWTBundlesResponse
	// jwt holds the JWT authorities, to validate JWT-SVIDs with.
	jwt *jwtbundle.Bundle
	// jwks is the JWT authorities as a JWKS.
	jwks []byte
}

// bundleFor returns the responses for bundle b, building them if b is
// not the bundle seen last. The cache replaces its bundle (a new
// pointer) on every change, so the pointer is the version.
func (s *Server) bundleFor(b *spiffebundle.Bundle) (*bundleResp, error) {
	if cur := s.bundles.Load(); cur != nil && cur.bundle == b {
		return cur, nil
	}
	r, err := s.buildBundleResp(b)
	if err != nil {
		return nil, err
	}
	s.bundles.Store(r)
	return r, nil
}

func (s *Server) buildBundleResp(b *spiffebundle.Bundle) (*bundleResp, error) {
	if td := b.TrustDomain(); td != s.td {
		return nil, fmt.Errorf("workloadapi: the cache holds a bundle of trust domain %q, not the local %q", td.Name(), s.td.Name())
	}
	r := &bundleResp{bundle: b}
	for _, c := range b.X509Authorities() {
		r.x509DER = append(r.x509DER, c.Raw...)
	}
	// Only the JWT authorities, each with its kid (go-spiffe refuses a
	// JWKS with a key without one), sorted by kid for a stable encoding.
	auth := b.JWTAuthorities()
	kids := make([]string, 0, len(auth))
	for kid := range auth {
		kids = append(kids, kid)
	}
	slices.SortFunc(kids, cmp.Compare)
	r.jwt = jwtbundle.New(s.td)
	jwks := jose.JSONWebKeySet{Keys: make([]jose.JSONWebKey, 0, len(kids))}
	for _, kid := range kids {
		k := jose.JSONWebKey{Key: auth[kid], KeyID: kid}
		if kid == "" || !k.Valid() {
			s.log.Warn("JWT authority left out of the Workload API's JWT bundle: unusable key", "kid", kid)
			continue
		}
		jwks.Keys = append(jwks.Keys, k)
		if err := r.jwt.AddJWTAuthority(kid, auth[kid]); err != nil {
			return nil, err
		}
	}
	jwksJSON, err := json.Marshal(jwks)
	if err != nil {
		return nil, fmt.Errorf("workloadapi: encode JWT bundle: %w", err)
	}
	r.jwks = jwksJSON
	if r.x509Msg, err = encode(&workload.X509BundlesResponse{Bundles: map[string][]byte{s.tdID: r.x509DER}}); err != nil {
		return nil, err
	}
	if r.jwtMsg, err = encode(&workload.JWTBundlesResponse{Bundles: map[string][]byte{s.tdID: jwksJSON}}); err != nil {
		return nil, err
	}
	return r, nil
}

func encode(m proto.Message) (*encodedMsg, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("workloadapi: encode %T: %w", m, err)
	}
	return &encodedMsg{b: b}, nil
}

// x509Resp is an X509SVIDResponse for one list of SVIDs, one bundle and
// one list of foreign bundles.
type x509Resp struct {
	svids     []*svidcache.X509SVID
	bundle    *spiffebundle.Bundle
	federated []*spiffebundle.Bundle
	msg       *encodedMsg
	// expires is the earliest NotAfter of svids: the response is dead
	// from then on.
	expires time.Time
}

// is reports whether r is the response for svids, b and fed.
func (r *x509Resp) is(svids []*svidcache.X509SVID, b *spiffebundle.Bundle, fed []*spiffebundle.Bundle) bool {
	return r != nil && r.bundle == b && slices.Equal(r.svids, svids) && slices.Equal(r.federated, fed)
}

const (
	// maxX509RespCache bounds the bytes of responses x509RespCache keeps;
	// past it, it forgets them all.
	maxX509RespCache = 32 << 20
	// x509RespSweep is how often, at most, x509RespCache drops responses
	// holding an expired SVID, so that rotated-away SVIDs and their keys
	// are not kept for long.
	x509RespSweep = time.Minute
)

// x509RespCache shares marshaled X509SVIDResponses between callers that
// see the same SVIDs: SVIDs are immutable and replaced (new pointers) on
// rotation, so a list of SVID pointers and a bundle pointer identify a
// response. Responses for another bundle are dropped when the bundle
// changes.
type x509RespCache struct {
	mu        sync.Mutex // guards bundle, m, size, nextSweep
	bundle    *spiffebundle.Bundle
	m         map[x509Key][]*x509Resp
	size      int
	nextSweep time.Time
}

type x509Key struct {
	first *svidcache.X509SVID
	n     int
}

// x509Response returns the response for svids (not empty), the bundle
// of br and the foreign bundles fed, from the cache or built.
func (s *Server) x509Response(svids []*svidcache.X509SVID, br *bundleResp, fed []*spiffebundle.Bundle) (*x509Resp, error) {
	c := &s.x509
	key := x509Key{first: svids[0], n: len(svids)}
	c.mu.Lock()
	if c.bundle == br.bundle {
		for _, r := range c.m[key] {
			if slices.Equal(r.svids, svids) && slices.Equal(r.federated, fed) {
				c.mu.Unlock()
				return r, nil
			}
		}
	}
	c.mu.Unlock()

	r, err := s.buildX509Resp(svids, br, fed)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bundle != br.bundle || c.size+len(r.msg.b) > maxX509RespCache {
		c.bundle, c.m, c.size = br.bundle, make(map[x509Key][]*x509Resp), 0
	}
	for _, old := range c.m[key] {
		if slices.Equal(old.svids, svids) && slices.Equal(old.federated, fed) {
			return old, nil // built concurrently
		}
	}
	c.m[key] = append(c.m[key], r)
	c.size += len(r.msg.b)
	if now := s.clk.Now(); now.After(c.nextSweep) {
		c.sweepLocked(now)
		c.nextSweep = now.Add(x509RespSweep)
	}
	return r, nil
}

// sweepLocked drops the responses that hold an SVID expired at now.
func (c *x509RespCache) sweepLocked(now time.Time) {
	for k, rs := range c.m {
		kept := rs[:0]
		for _, r := range rs {
			if now.Before(r.expires) {
				kept = append(kept, r)
			} else {
				c.size -= len(r.msg.b)
			}
		}
		clear(rs[len(kept):])
		if len(kept) == 0 {
			delete(c.m, k)
		} else {
			c.m[k] = kept
		}
	}
}

func (s *Server) buildX509Resp(svids []*svidcache.X509SVID, br *bundleResp, fed []*spiffebundle.Bundle) (*x509Resp, error) {
	encs, err := s.federatedFor(fed)
	if err != nil {
		return nil, err
	}
	resp := &workload.X509SVIDResponse{Svids: make([]*workload.X509SVID, len(svids)), FederatedBundles: x509FederatedMap(encs)}
	expires := svids[0].NotAfter
	for i, sv := range svids {
		if sv.NotAfter.Before(expires) {
			expires = sv.NotAfter
		}
		if sv.ID.TrustDomain() != s.td {
			// Cannot happen: entries are validated for the local trust
			// domain. Never pair an SVID with another domain's bundle.
			return nil, fmt.Errorf("workloadapi: X.509-SVID %s of entry %s is not in the local trust domain", sv.ID, sv.EntryID)
		}
		resp.Svids[i] = &workload.X509SVID{
			SpiffeId:    sv.ID.String(),
			X509Svid:    sv.ChainDER,
			X509SvidKey: sv.PrivateKeyDER,
			Bundle:      br.x509DER,
			Hint:        svidHint(sv.EntryID),
		}
	}
	m, err := encode(resp)
	if err != nil {
		return nil, err
	}
	return &x509Resp{svids: svids, bundle: br.bundle, federated: fed, msg: m, expires: expires}, nil
}
