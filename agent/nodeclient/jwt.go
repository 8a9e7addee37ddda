package nodeclient

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/entry"
)

// MaxJWTBatch is the most requests one BatchSignJWT may carry: the
// server's limit.
const MaxJWTBatch = 256

// JWTRequest asks for a JWT-SVID of an entry (a template instance's ID,
// as for BatchSign) for an audience.
type JWTRequest struct {
	EntryID  string
	Audience []string
}

// JWTResult is the answer to one JWTRequest: a token and its expiry, or
// the error that refused it (wrapping ErrPermissionDenied when the entry
// is not the agent's).
type JWTResult struct {
	Token     string
	ExpiresAt time.Time
	Err       error
}

// BatchSignJWT asks for JWT-SVIDs in one call and returns one result per
// request, in request order; a refused request fails no other. It fails
// as a whole, with an error wrapping ErrUnavailable, when no connection
// is ready within JWTConnectTimeout, and within SignTimeout (plus 10 ms
// per request) in all. A server without BatchSignJWTSVID is asked with
// SignJWTSVID, one call per request (and is not asked again).
func (c *Client) BatchSignJWT(ctx context.Context, reqs []JWTRequest) ([]JWTResult, error) {
	if len(reqs) > MaxJWTBatch {
		return nil, fmt.Errorf("nodeclient: %d JWT-SVID requests in one batch (at most %d)", len(reqs), MaxJWTBatch)
	}
	if len(reqs) == 0 {
		return nil, nil
	}
	if err := c.WaitReady(ctx, JWTConnectTimeout); err != nil {
		return nil, err
	}
	if c.noBatchJWT.Load() {
		return c.signJWTEach(ctx, reqs), nil
	}
	in := &nodev1.BatchSignJWTSVIDRequest{Requests: make([]*nodev1.SignJWTSVIDRequest, len(reqs))}
	for i, r := range reqs {
		in.Requests[i] = &nodev1.SignJWTSVIDRequest{EntryId: r.EntryID, Audience: r.Audience}
		if tid, sid, ok := entry.SplitInstanceID(r.EntryID); ok {
			in.Requests[i].EntryId, in.Requests[i].SpiffeId = tid, sid
		}
	}
	cctx, cancel := context.WithTimeout(ctx, SignTimeout+time.Duration(len(reqs))*perItemTimeout)
	defer cancel()
	resp, err := c.node.BatchSignJWTSVID(cctx, in)
	if status.Code(err) == codes.Unimplemented && ctx.Err() == nil {
		c.noBatchJWT.Store(true)
		return c.signJWTEach(ctx, reqs), nil
	}
	if err != nil {
		return nil, c.mapError(ctx, err)
	}
	results := resp.GetResults()
	if len(results) != len(reqs) {
		return nil, fmt.Errorf("%w: %d results for %d JWT-SVID requests", ErrProtocol, len(results), len(reqs))
	}
	out := make([]JWTResult, len(reqs))
	for i, r := range results {
		switch {
		case r.GetEntryId() != in.Requests[i].GetEntryId():
			out[i].Err = fmt.Errorf("%w: result %d is for entry %q, want %q", ErrProtocol, i, r.GetEntryId(), in.Requests[i].GetEntryId())
		case codes.Code(r.GetStatus().GetCode()) != codes.OK:
			out[i].Err = c.mapError(ctx, status.Error(codes.Code(r.GetStatus().GetCode()), r.GetStatus().GetMessage()))
		case r.GetToken() == "":
			out[i].Err = fmt.Errorf("%w: result %d has no JWT-SVID", ErrProtocol, i)
		default:
			out[i] = JWTResult{Token: r.GetToken(), ExpiresAt: time.Unix(r.GetExpiresAt(), 0)}
		}
	}
	return out, nil
}

// signJWTEach asks for each JWT-SVID with SignJWTSVID, concurrently.
func (c *Client) signJWTEach(ctx context.Context, reqs []JWTRequest) []JWTResult {
	out := make([]JWTResult, len(reqs))
	var wg sync.WaitGroup
	for i, r := range reqs {
		wg.Go(func() {
			tok, exp, err := c.SignJWT(ctx, r.EntryID, r.Audience)
			out[i] = JWTResult{Token: tok, ExpiresAt: exp, Err: err}
		})
	}
	wg.Wait()
	return out
}
