package workloadapi

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"sync"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
)

// maxFedEncodings bounds the encoded foreign bundles fedCache keeps;
// past it, it forgets them all.
const maxFedEncodings = 256

// fedEncoding is one version of a foreign trust domain's bundle, encoded
// once for the Workload API. It is immutable.
type fedEncoding struct {
	// key is the bundle maps' key, "spiffe://<td>".
	key string
	// x509DER is the X.509 authorities, concatenated DER (nil if none).
	x509DER []byte
	// jwks is the JWT authorities as a JWKS, each with its kid.
	jwks []byte
	// jwt holds the JWT authorities, to validate JWT-SVIDs with.
	jwt *jwtbundle.Bundle
}

// fedCache holds the encodings of foreign bundles by bundle pointer: the
// agent's cache replaces a bundle (a new pointer) on every change.
type fedCache struct {
	mu sync.Mutex // guards m
	m  map[*spiffebundle.Bundle]*fedEncoding
}

// federatedFor returns the encodings of bundles, in order, building those
// not seen before. A foreign bundle is never encoded under the local
// trust domain's key.
func (s *Server) federatedFor(bundles []*spiffebundle.Bundle) ([]*fedEncoding, error) {
	if len(bundles) == 0 {
		return nil, nil
	}
	out := make([]*fedEncoding, 0, len(bundles))
	c := &s.fed
	for _, b := range bundles {
		if b.TrustDomain() == s.td {
			return nil, fmt.Errorf("workloadapi: a federated bundle of the local trust domain %q", s.td.Name())
		}
		c.mu.Lock()
		enc := c.m[b]
		c.mu.Unlock()
		if enc == nil {
			var err error
			if enc, err = s.encodeFederated(b); err != nil {
				return nil, err
			}
			c.mu.Lock()
			if c.m == nil || len(c.m) >= maxFedEncodings {
				c.m = make(map[*spiffebundle.Bundle]*fedEncoding)
			}
			c.m[b] = enc
			c.mu.Unlock()
		}
		out = append(out, enc)
	}
	return out, nil
}

func (s *Server) encodeFederated(b *spiffebundle.Bundle) (*fedEncoding, error) {
	td := b.TrustDomain()
	enc := &fedEncoding{key: td.IDString(), jwt: jwtbundle.New(td)}
	for _, c := range b.X509Authorities() {
		enc.x509DER = append(enc.x509DER, c.Raw...)
	}
	auth := b.JWTAuthorities()
	kids := make([]string, 0, len(auth))
	for kid := range auth {
		kids = append(kids, kid)
	}
	slices.SortFunc(kids, cmp.Compare)
	jwks := jose.JSONWebKeySet{Keys: make([]jose.JSONWebKey, 0, len(kids))}
	for _, kid := range kids {
		k := jose.JSONWebKey{Key: auth[kid], KeyID: kid}
		if kid == "" || !k.Valid() {
			s.log.Warn("JWT authority of a federated trust domain left out of the Workload API's JWT bundles: unusable key", "trust_domain", td.Name(), "kid", kid)
			continue
		}
		jwks.Keys = append(jwks.Keys, k)
		if err := enc.jwt.AddJWTAuthority(kid, auth[kid]); err != nil {
			return nil, err
		}
	}
	var err error
	if enc.jwks, err = json.Marshal(jwks); err != nil {
		return nil, fmt.Errorf("workloadapi: encode the JWT bundle of %s: %w", td.Name(), err)
	}
	return enc, nil
}

// x509FederatedMap returns the X.509 authorities of fed keyed
// "spiffe://<td>", leaving out trust domains without any; nil if empty.
func x509FederatedMap(fed []*fedEncoding) map[string][]byte {
	var m map[string][]byte
	for _, f := range fed {
		if len(f.x509DER) == 0 {
			continue
		}
		if m == nil {
			m = make(map[string][]byte, len(fed))
		}
		m[f.key] = f.x509DER
	}
	return m
}

// bundlesMessages returns the X509BundlesResponse and JWTBundlesResponse
// for the local bundle of br and the foreign bundles fed: br's shared
// messages when fed is empty.
func (s *Server) bundlesMessages(br *bundleResp, fed []*fedEncoding) (x509Msg, jwtMsg *encodedMsg, err error) {
	if len(fed) == 0 {
		return br.x509Msg, br.jwtMsg, nil
	}
	x := map[string][]byte{s.tdID: br.x509DER}
	j := map[string][]byte{s.tdID: br.jwks}
	for _, f := range fed {
		if len(f.x509DER) > 0 {
			x[f.key] = f.x509DER
		}
		j[f.key] = f.jwks
	}
	if x509Msg, err = encode(&workload.X509BundlesResponse{Bundles: x}); err != nil {
		return nil, nil, err
	}
	if jwtMsg, err = encode(&workload.JWTBundlesResponse{Bundles: j}); err != nil {
		return nil, nil, err
	}
	return x509Msg, jwtMsg, nil
}

// jwtSource returns the JWT authorities of the local trust domain and of
// fed, for ValidateJWTSVID: a token of any other trust domain finds no
// bundle.
func jwtSource(br *bundleResp, fed []*fedEncoding) jwtbundle.Source {
	if len(fed) == 0 {
		return br.jwt
	}
	set := jwtbundle.NewSet(br.jwt)
	for _, f := range fed {
		set.Add(f.jwt)
	}
	return set
}
