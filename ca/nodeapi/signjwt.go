package nodeapi

import (
	"context"
	"crypto"
	"log/slog"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/jwtsvid"
	"writ.dev/writ/ca/keymanager"

	"writ.dev/writ/internal/logkey"
	"writ.dev/writ/internal/metrics"
)

// activeJWTSigner returns a signer for a's JWT key, reusing the last one
// made while the key stays the same.
func (s *Service) activeJWTSigner(a *keymanager.Active) (*jwtsvid.Signer, error) {
	if js := s.jwtSigner.Load(); js != nil && sameJWTKey(js.Key(), a.JWT) {
		return js, nil
	}
	js, err := jwtsvid.NewSigner(a.JWT)
	if err != nil {
		return nil, err
	}
	s.jwtSigner.Store(js)
	return js, nil
}

// sameJWTKey tells whether two keys are the same key with the same
// issuer. (Signers are compared by their public keys: a crypto.Signer
// need not be comparable.)
func sameJWTKey(a, b jwtsvid.Key) bool {
	if a.ID != b.ID || a.Issuer != b.Issuer || a.Signer == nil || b.Signer == nil {
		return false
	}
	pa, ok := a.Signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pa.Equal(b.Signer.Public())
}

// BatchSignJWTSVID signs a JWT-SVID for each request as SignJWTSVID does:
// each entry is authorized for the caller, and each audience checked, on
// its own, and each result has its own status in request order. The
// tokens are signed in parallel.
func (h *handler) BatchSignJWTSVID(ctx context.Context, req *nodev1.BatchSignJWTSVIDRequest) (*nodev1.BatchSignJWTSVIDResponse, error) {
	s := h.s
	c, err := s.callerFrom(ctx, true)
	if err != nil {
		return nil, err
	}
	reqs := req.GetRequests()
	if len(reqs) > MaxBatchSignJWT {
		return nil, status.Errorf(codes.InvalidArgument, "too many requests: %d (at most %d)", len(reqs), MaxBatchSignJWT)
	}
	a := s.km.Active()
	if a == nil || a.JWT.Signer == nil {
		return nil, status.Error(codes.Unavailable, msgNoCA)
	}
	signer, err := s.activeJWTSigner(a)
	if err != nil {
		return nil, s.internal(ctx, c, "sign JWT-SVID", err)
	}
	now := s.clock.Now()
	resp := &nodev1.BatchSignJWTSVIDResponse{Results: make([]*nodev1.JWTSVIDResult, len(reqs))}
	var (
		signed, unauthorized atomic.Int64
		// firstUnauthorized and firstFailure are logged for the batch,
		// not each item, so that one call cannot write hundreds of log
		// records.
		firstUnauthorized atomic.Pointer[string]
		firstFailure      atomic.Pointer[error]
	)
	signOne := func(i int) {
		r := reqs[i]
		res := &nodev1.JWTSVIDResult{EntryId: r.GetEntryId()}
		resp.Results[i] = res
		e := s.authorizedEntry(c, r.GetEntryId())
		sid, ok := s.issuedID(c, e, r.GetSpiffeId())
		if !ok {
			unauthorized.Add(1)
			id := r.GetEntryId()
			firstUnauthorized.CompareAndSwap(nil, &id)
			res.Status = itemStatus(codes.PermissionDenied, msgEntryNotAuthorized)
			return
		}
		if err := checkAudience(r.GetAudience()); err != nil {
			res.Status = itemStatus(codes.InvalidArgument, err.Error())
			return
		}
		began := s.clock.Now()
		token, exp, err := signer.Sign(now, sid, r.GetAudience(), defaultTTL(e.JWTSVIDTTL, s.jwtTTL), a.JWTNotAfter)
		if err != nil {
			firstFailure.CompareAndSwap(nil, &err)
			res.Status = itemStatus(codes.Internal, msgInternal)
			return
		}
		s.metrics.Signed(metrics.KindJWT, s.clock.Now().Sub(began))
		signed.Add(1)
		res.Status = itemStatus(codes.OK, "")
		res.Token, res.ExpiresAt = token, exp.Unix()
	}
	// An ECDSA signature costs tens of microseconds: spread a batch
	// over the CPUs. Each item writes only its own result.
	forEachParallel(ctx, len(reqs), jwtBatchChunk, signOne)
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	if p := firstFailure.Load(); p != nil {
		s.log.LogAttrs(ctx, slog.LevelError, "cannot sign JWT-SVID", slog.String(logkey.SPIFFEID, c.id.String()), slog.String(logkey.Error, (*p).Error()))
	}
	if n := unauthorized.Load(); n > 0 {
		s.log.LogAttrs(ctx, slog.LevelWarn, "JWT-SVIDs refused", slog.String(logkey.SPIFFEID, c.id.String()), slog.Int64("count", n),
			slog.String(logkey.EntryID, logEntryID(*firstUnauthorized.Load())), slog.String(logkey.Reason, "entries missing or not the agent's, or IDs their templates do not fill"))
	}
	return resp, nil
}

// jwtBatchChunk is the least number of JWT-SVIDs worth another goroutine.
const jwtBatchChunk = 2
