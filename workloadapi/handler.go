package workloadapi

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/entry"

	"writ.dev/writ/internal/logkey"
)

// recheckAfter: a FetchJWTSVID call that took longer than this (it waited
// for the server to sign) checks the caller again before answering.
const recheckAfter = time.Millisecond

// handler implements the SPIFFE Workload API. The security header has
// been checked by the interceptors before any method runs. The WIT-SVID
// profile is not provided: its methods answer Unimplemented.
type handler struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	s *Server
}

// FetchX509SVID streams the caller's X.509-SVIDs: the first message at
// once, then one on every change of what the caller sees, each with the
// full current set. A caller that matches no entry is refused at once; one
// whose entries are not signed yet waits for them; one that loses its last
// SVID (entry removed or changed, SVID expired) gets PermissionDenied and
// the stream ends, as SPIRE does: a message with no SVID is invalid.
func (h *handler) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	s := h.s
	ctx := stream.Context()
	st, sel, err := s.attest(ctx)
	if err != nil {
		return err
	}
	sub := s.cache.Subscribe(sel)
	defer sub.Close()
	var last *x509Resp
	// checked: attest has just confirmed the caller; after any wait,
	// it is confirmed again before sending.
	checked := true
	for {
		state := sub.State()
		switch {
		case len(state.X509SVIDs) == 0:
			if last != nil || len(s.cache.Identities(sel)) == 0 {
				s.logRefused(st, "caller has no X.509-SVID", nil)
				return s.unentitled()
			}
			// Entitled, but nothing signed yet: wait.
		case state.Bundle == nil, last.is(state.X509SVIDs, state.Bundle, state.Federated):
		default:
			br, err := s.bundleFor(state.Bundle)
			if err != nil {
				s.log.Error("cannot serve the bundle", logkey.Error, err)
				break // wait for another bundle
			}
			r, err := s.x509Response(state.X509SVIDs, br, state.Federated)
			if err != nil {
				s.log.Error("cannot encode X.509-SVID response", logkey.Error, err)
				return status.Error(codes.Internal, "cannot encode the response")
			}
			if !checked {
				if err := s.check(st); err != nil {
					return err
				}
			}
			if err := stream.SendMsg(r.msg); err != nil {
				return err
			}
			last = r
		}
		select {
		case <-sub.Changed():
			checked = false
		case <-ctx.Done():
			return contextStatus(ctx.Err())
		case <-s.stopping:
			return errStopping
		}
	}
}

// FetchX509Bundles streams the X.509 authorities of the local trust
// domain and of the foreign trust domains the caller's entries federate
// with, keyed "spiffe://<td>".
func (h *handler) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	return h.s.streamBundles(stream, func(x509Msg, _ *encodedMsg) *encodedMsg { return x509Msg })
}

// FetchJWTBundles streams the JWT authorities of the local trust domain
// and of the foreign trust domains the caller's entries federate with,
// each as a JWKS keyed "spiffe://<td>".
func (h *handler) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	return h.s.streamBundles(stream, func(_, jwtMsg *encodedMsg) *encodedMsg { return jwtMsg })
}

// streamBundles sends pick(x509 message, JWT message) on stream at once
// and after every change of the local bundle or of the foreign bundles
// the caller's entries federate with. Unless verifiers without identity
// are allowed, the caller must match an entry, at the start and for as
// long as the stream lasts.
func (s *Server) streamBundles(stream grpc.ServerStream, pick func(x509Msg, jwtMsg *encodedMsg) *encodedMsg) error {
	ctx := stream.Context()
	st, sel, err := s.attest(ctx)
	if err != nil {
		return err
	}
	needIdentity := !s.allowVerifiers
	follow := sel
	if !needIdentity {
		follow = nil // the bundle only
	}
	sub := s.cache.Subscribe(follow)
	defer sub.Close()
	var (
		last     *bundleResp
		lastFed  []*spiffebundle.Bundle
		lastSent bool
	)
	checked := true // as in FetchX509SVID
	for {
		if needIdentity && len(s.cache.Identities(sel)) == 0 {
			s.logRefused(st, "caller matches no entry", nil)
			return s.unentitled()
		}
		fed := s.cache.FederatedBundles(sel)
		if b := s.cache.Bundle(); b != nil && (!lastSent || last.bundle != b || !slices.Equal(lastFed, fed)) {
			br, err := s.bundleFor(b)
			var encs []*fedEncoding
			if err == nil {
				encs, err = s.federatedFor(fed)
			}
			var x509Msg, jwtMsg *encodedMsg
			if err == nil {
				x509Msg, jwtMsg, err = s.bundlesMessages(br, encs)
			}
			if err != nil {
				s.log.Error("cannot serve the bundle", logkey.Error, err)
			} else {
				if !checked {
					if err := s.check(st); err != nil {
						return err
					}
				}
				if err := stream.SendMsg(pick(x509Msg, jwtMsg)); err != nil {
					return err
				}
				last, lastFed, lastSent = br, fed, true
			}
		}
		select {
		case <-sub.Changed():
			checked = false
		case <-ctx.Done():
			return contextStatus(ctx.Err())
		case <-s.stopping:
			return errStopping
		}
	}
}

// FetchJWTSVID returns JWT-SVIDs for the audience: one per SPIFFE ID of
// the caller, or only for spiffe_id if set.
func (h *handler) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	s := h.s
	start := time.Now()
	st, sel, err := s.attest(ctx)
	if err != nil {
		return nil, err
	}
	audience, want, err := parseJWTSVIDRequest(req)
	if err != nil {
		return nil, err
	}
	idents := s.cache.Identities(sel)
	if len(idents) == 0 {
		s.logRefused(st, "caller matches no entry", nil)
		return nil, s.unentitled()
	}
	resp, gone, err := s.jwtResponse(ctx, idents, want, audience)
	if err == nil && len(resp.Svids) == 0 && gone {
		// Every entry looked up went before its token was fetched (a
		// template instance collected, an entry re-created): look once
		// more.
		if idents = s.cache.Identities(sel); len(idents) > 0 {
			resp, _, err = s.jwtResponse(ctx, idents, want, audience)
		}
	}
	if err != nil {
		return nil, err
	}
	if len(resp.Svids) == 0 {
		if err := s.unentitled(); !errors.Is(err, errNoIdentity) {
			return nil, err
		}
		if !want.IsZero() {
			s.logRefused(st, "caller asked for a SPIFFE ID it is not entitled to", nil)
			return nil, status.Error(codes.PermissionDenied, "no identity issued for the requested SPIFFE ID")
		}
		return nil, s.unentitled()
	}
	// If a token had to be signed, the caller waited for the server: it
	// must still be the process that asked. (A latency, not a timer:
	// the monotonic clock, not the Clock.)
	if time.Since(start) > recheckAfter {
		if err := s.check(st); err != nil {
			return nil, err
		}
	}
	return resp, nil
}

// jwtResponse fetches a JWT-SVID for the audience for each of the
// caller's identities (only want, if set); an identity whose entries
// were all removed meanwhile is left out, and gone reports it.
func (s *Server) jwtResponse(ctx context.Context, idents []svidcache.Identity, want spiffeid.ID, audience []string) (resp *workload.JWTSVIDResponse, gone bool, err error) {
	// The caller's identities, each with the entries that issue it, are
	// fetched at once: the tokens to sign reach the server together.
	var groups [][]svidcache.Identity
	for _, id := range idents { // ordered by SPIFFE ID
		if !want.IsZero() && id.ID != want {
			continue
		}
		if n := len(groups); n > 0 && groups[n-1][0].ID == id.ID {
			groups[n-1] = append(groups[n-1], id)
			continue
		}
		groups = append(groups, []svidcache.Identity{id})
	}
	results := s.fetchJWTSVIDs(ctx, groups, audience)
	resp = &workload.JWTSVIDResponse{}
	for i, r := range results {
		id := groups[i][0]
		switch err := r.err; {
		case err == nil && r.svid == nil:
			gone = true // every entry removed meanwhile
			continue
		case err == nil:
		case ctx.Err() != nil:
			return nil, false, contextStatus(ctx.Err())
		case errors.Is(err, svidcache.ErrUnavailable):
			s.log.Warn("cannot get a JWT-SVID: the server is unavailable", logkey.SPIFFEID, id.ID.String(), logkey.EntryID, r.entryID, logkey.Error, err)
			return nil, false, status.Error(codes.Unavailable, "cannot issue a JWT-SVID now: the server is unavailable")
		default:
			s.log.Error("cannot get a JWT-SVID", logkey.SPIFFEID, id.ID.String(), logkey.EntryID, r.entryID, logkey.Error, err)
			return nil, false, status.Error(codes.Internal, "cannot issue a JWT-SVID")
		}
		resp.Svids = append(resp.Svids, &workload.JWTSVID{SpiffeId: id.ID.String(), Svid: r.svid.Token, Hint: svidHint(r.entryID)})
	}
	return resp, gone, nil
}

// jwtFetch is the result of fetching one identity's JWT-SVID: the token
// and the entry that gave it, or the error; neither if every entry of the
// identity was removed meanwhile.
type jwtFetch struct {
	svid    *svidcache.JWTSVID
	entryID string
	err     error
}

// maxJWTFetches bounds the identities of one call fetched at once.
const maxJWTFetches = 32

// fetchJWTSVIDs fetches a JWT-SVID for each group of entries of one
// identity (the first entry still in the cache gives it), the groups
// concurrently. Results are in the groups' order.
func (s *Server) fetchJWTSVIDs(ctx context.Context, groups [][]svidcache.Identity, audience []string) []jwtFetch {
	out := make([]jwtFetch, len(groups))
	fetch := func(i int) {
		for _, id := range groups[i] {
			j, err := s.cache.FetchJWTSVID(ctx, id.EntryID, audience)
			if errors.Is(err, svidcache.ErrUnknownEntry) {
				continue // removed meanwhile; another entry may have the ID
			}
			out[i] = jwtFetch{svid: j, entryID: id.EntryID, err: err}
			return
		}
	}
	if len(groups) == 1 {
		fetch(0)
		return out
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(len(groups), maxJWTFetches) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(groups) {
					return
				}
				fetch(i)
			}
		})
	}
	wg.Wait()
	return out
}

// parseJWTSVIDRequest checks a FetchJWTSVID request: at least one
// audience, none empty, at most maxAudiences of at most maxAudienceLen
// bytes; spiffe_id empty (all identities) or a canonical SPIFFE ID.
func parseJWTSVIDRequest(req *workload.JWTSVIDRequest) ([]string, spiffeid.ID, error) {
	aud := req.GetAudience()
	switch {
	case len(aud) == 0:
		return nil, spiffeid.ID{}, status.Error(codes.InvalidArgument, "audience must be specified")
	case len(aud) > maxAudiences:
		return nil, spiffeid.ID{}, status.Errorf(codes.InvalidArgument, "too many audiences (%d; at most %d)", len(aud), maxAudiences)
	}
	for _, a := range aud {
		if a == "" {
			return nil, spiffeid.ID{}, status.Error(codes.InvalidArgument, "audience must not be empty")
		}
		if len(a) > maxAudienceLen {
			return nil, spiffeid.ID{}, status.Errorf(codes.InvalidArgument, "audience longer than %d bytes", maxAudienceLen)
		}
	}
	var id spiffeid.ID
	if s := req.GetSpiffeId(); s != "" {
		var err error
		if id, err = entry.ParseID(s); err != nil {
			return nil, spiffeid.ID{}, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	return aud, id, nil
}

// ValidateJWTSVID validates a JWT-SVID for an audience with the JWT
// authorities of the subject's trust domain (jwtsvid.Validate): the local
// one, or a foreign one the caller's entries federate with. It returns
// the token's SPIFFE ID and claims. An invalid token, or one of a trust
// domain the caller does not federate with, is InvalidArgument, with the
// reason.
func (h *handler) ValidateJWTSVID(ctx context.Context, req *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	s := h.s
	st, sel, err := s.attest(ctx)
	if err != nil {
		return nil, err
	}
	if !s.allowVerifiers && len(s.cache.Identities(sel)) == 0 {
		s.logRefused(st, "caller matches no entry", nil)
		return nil, s.unentitled()
	}
	if err := checkValidateRequest(req); err != nil {
		return nil, err
	}
	b := s.cache.Bundle()
	if b == nil {
		return nil, errNoBundle
	}
	br, err := s.bundleFor(b)
	if err != nil {
		s.log.Error("cannot serve the bundle", logkey.Error, err)
		return nil, errNoBundle
	}
	encs, err := s.federatedFor(s.cache.FederatedBundles(sel))
	if err != nil {
		s.log.Error("cannot serve the federated bundles", logkey.Error, err)
		return nil, errNoBundle
	}
	claims, err := s.verifier.Validate(req.GetSvid(), jwtSource(br, encs), []string{req.GetAudience()}, s.clk.Now())
	if err != nil {
		s.logRefused(st, "JWT-SVID refused", err)
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if s.revocations != nil && s.revocations.Revoked(stringClaim(claims.Raw, "jti"), claims.ID.String(), stringClaim(claims.Raw, "client_id"), claims.IssuedAt) {
		s.logRefused(st, "JWT-SVID refused: revoked", nil)
		return nil, errRevoked
	}
	claimsPB, err := structpb.NewStruct(claims.Raw)
	if err != nil {
		// encoding/json produced them; every value converts.
		return nil, status.Error(codes.Internal, fmt.Sprintf("cannot convert the claims: %v", err))
	}
	return &workload.ValidateJWTSVIDResponse{SpiffeId: claims.ID.String(), Claims: claimsPB}, nil
}

// errRevoked answers ValidateJWTSVID for a revoked token, without
// saying which revocation applies.
var errRevoked = status.Error(codes.InvalidArgument, "token revoked")

// stringClaim returns claim name of raw if it is a string, else "".
func stringClaim(raw map[string]any, name string) string {
	s, _ := raw[name].(string)
	return s
}

// checkValidateRequest checks that a ValidateJWTSVID request has both of
// its mandatory fields.
func checkValidateRequest(req *workload.ValidateJWTSVIDRequest) error {
	switch {
	case req.GetAudience() == "":
		return status.Error(codes.InvalidArgument, "audience must be specified")
	case req.GetSvid() == "":
		return status.Error(codes.InvalidArgument, "svid must be specified")
	}
	return nil
}
