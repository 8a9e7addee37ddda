package nodeapi

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/x509ca"

	"writ.dev/writ/internal/logkey"
	"writ.dev/writ/internal/metrics"
)

// msgEntryNotAuthorized answers a request for an entry the agent may not
// use, whether or not it exists: telling the two apart would let an agent
// probe for other agents' entry IDs.
const msgEntryNotAuthorized = "entry is not authorized for this agent"

// authorizedEntry returns the entry with this ID if the caller may sign
// for it: it exists, the caller is its parent (or a member of the node alias that
// is), and its SPIFFE ID is one
// the server may issue.
func (s *Service) authorizedEntry(c *caller, id string) *entry.Entry {
	e := s.idx.entryForAgent(id, c.id)
	if e == nil {
		return nil
	}
	if e.SPIFFEID.TrustDomain() != s.td || e.SPIFFEID.Path() == "" || entry.IsReserved(e.SPIFFEID) {
		s.log.Error("refusing to sign for an entry with an ID the server must not issue", logkey.EntryID, e.ID, logkey.SPIFFEID, e.SPIFFEID.String())
		return nil
	}
	return e
}

// issuedID returns the SPIFFE ID to sign for entry e (nil if it is not
// authorized) when the agent asks for requested. A plain entry issues its
// own ID (requested is empty or that ID). A template entry issues the ID
// the agent filled in, which must conform to the template: its literal
// segments and shape, outside the reserved path, and its node.*
// placeholders filled from the node selectors recorded for the calling
// agent c. The caller's selectors stay on the agent, which is trusted to
// match them, as for plain entries; the template bounds what a
// compromised agent can ask for.
func (s *Service) issuedID(c *caller, e *entry.Entry, requested string) (spiffeid.ID, bool) {
	if e == nil {
		return spiffeid.ID{}, false
	}
	if e.Template == "" {
		return e.SPIFFEID, requested == "" || requested == e.SPIFFEID.String()
	}
	t, err := entry.ParseTemplate(s.td, e.Template)
	if err != nil {
		s.log.Error("refusing to sign for a template entry whose template does not parse", logkey.EntryID, e.ID, logkey.Error, err.Error())
		return spiffeid.ID{}, false
	}
	id, err := entry.ParseWorkloadID(s.td, requested)
	if err != nil || !t.Conforms(id) {
		return spiffeid.ID{}, false
	}
	if t.UsesNode() && !t.ConformsFor(id, s.idx.agentSelectors(c.id)) {
		return spiffeid.ID{}, false
	}
	return id, true
}

// logEntryID is how an entry ID from a request is logged: escaped, and
// only if it could be an entry ID at all.
func logEntryID(id string) string {
	if len(id) > 64 {
		return "(too long)"
	}
	return entry.Printable(id)
}

// BatchSignX509SVID signs an X.509-SVID for each request whose entry
// belongs to the caller, with the SPIFFE ID, DNS names and TTL of the
// entry; the CSR gives only the public key. Each result has its own
// status.
func (h *handler) BatchSignX509SVID(ctx context.Context, req *nodev1.BatchSignX509SVIDRequest) (*nodev1.BatchSignX509SVIDResponse, error) {
	s := h.s
	c, err := s.callerFrom(ctx, true)
	if err != nil {
		return nil, err
	}
	reqs := req.GetRequests()
	if len(reqs) > MaxBatchSign {
		return nil, status.Errorf(codes.InvalidArgument, "too many requests: %d (at most %d)", len(reqs), MaxBatchSign)
	}
	a := s.km.Active()
	if a == nil || a.X509 == nil {
		return nil, status.Error(codes.Unavailable, msgNoCA)
	}
	now := s.clock.Now()
	resp := &nodev1.BatchSignX509SVIDResponse{Results: make([]*nodev1.X509SVIDResult, len(reqs))}
	var (
		signed, unauthorized atomic.Int64
		// firstUnauthorized is logged for the batch, not each item, so
		// that one call cannot write a thousand log records.
		firstUnauthorized atomic.Pointer[string]
	)
	signOne := func(i int) {
		r := reqs[i]
		res := &nodev1.X509SVIDResult{EntryId: r.GetEntryId()}
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
		pub, err := x509ca.CheckCSR(r.GetCsr())
		if err != nil {
			res.Status = itemStatus(codes.InvalidArgument, status.Convert(invalidArg("invalid CSR", err)).Message())
			return
		}
		began := s.clock.Now()
		der, err := x509ca.SignX509SVID(now, a.X509, x509ca.SVIDParams{
			ID:        sid,
			DNSNames:  e.DNSNames,
			TTL:       defaultTTL(e.X509SVIDTTL, s.x509TTL),
			PublicKey: pub,
		})
		if err != nil {
			s.log.LogAttrs(ctx, slog.LevelError, "cannot sign X.509-SVID", slog.String(logkey.SPIFFEID, c.id.String()), slog.String(logkey.EntryID, e.ID), slog.String(logkey.Error, err.Error()))
			res.Status = itemStatus(codes.Internal, msgInternal)
			return
		}
		if ttl := defaultTTL(e.X509SVIDTTL, s.x509TTL); now.Add(ttl).After(a.X509.Cert.NotAfter) {
			s.log.LogAttrs(ctx, slog.LevelDebug, "X.509-SVID lifetime cut to its CA's", slog.String(logkey.EntryID, e.ID), slog.Duration("ttl", ttl), slog.Time("ca_not_after", a.X509.Cert.NotAfter))
		}
		s.metrics.Signed(metrics.KindX509, s.clock.Now().Sub(began))
		signed.Add(1)
		res.Status = itemStatus(codes.OK, "")
		res.SvidChain = a.X509.SVIDChain(der)
	}
	// Signing is CPU-bound (a CSR check and a signature, each with an
	// ECDSA or RSA operation): spread a large batch over the CPUs. Each
	// item writes only its own result.
	forEachParallel(ctx, len(reqs), batchChunk, signOne)
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	if n := unauthorized.Load(); n > 0 {
		s.log.LogAttrs(ctx, slog.LevelWarn, "X.509-SVIDs refused", slog.String(logkey.SPIFFEID, c.id.String()), slog.Int64("count", n),
			slog.String(logkey.EntryID, logEntryID(*firstUnauthorized.Load())), slog.String(logkey.Reason, "entries missing or not the agent's"))
	}
	s.log.LogAttrs(ctx, slog.LevelDebug, "X.509-SVIDs signed", slog.String(logkey.SPIFFEID, c.id.String()), slog.Int64("signed", signed.Load()), slog.Int("refused", len(reqs)-int(signed.Load())))
	return resp, nil
}

// batchChunk is the least number of batch items worth another goroutine.
const batchChunk = 8

func itemStatus(code codes.Code, msg string) *nodev1.Status {
	return &nodev1.Status{Code: int32(code), Message: msg}
}

// checkAudience applies the limits on JWT-SVID audiences. (They are
// valid UTF-8: protobuf refuses proto3 strings that are not.)
func checkAudience(aud []string) error {
	if len(aud) == 0 {
		return fmt.Errorf("audience is required")
	}
	if len(aud) > MaxAudiences {
		return fmt.Errorf("too many audiences: %d (at most %d)", len(aud), MaxAudiences)
	}
	for i, a := range aud {
		switch {
		case a == "":
			return fmt.Errorf("audience %d is empty", i)
		case len(a) > MaxAudienceLength:
			return fmt.Errorf("audience %d is longer than %d bytes", i, MaxAudienceLength)
		}
	}
	return nil
}

// SignJWTSVID signs a JWT-SVID for one of the caller's entries.
func (h *handler) SignJWTSVID(ctx context.Context, req *nodev1.SignJWTSVIDRequest) (*nodev1.SignJWTSVIDResponse, error) {
	s := h.s
	c, err := s.callerFrom(ctx, true)
	if err != nil {
		return nil, err
	}
	e := s.authorizedEntry(c, req.GetEntryId())
	sid, ok := s.issuedID(c, e, req.GetSpiffeId())
	if !ok {
		s.log.LogAttrs(ctx, slog.LevelWarn, "JWT-SVID refused", slog.String(logkey.SPIFFEID, c.id.String()), slog.String(logkey.EntryID, logEntryID(req.GetEntryId())), slog.String(logkey.Reason, "entry missing or not the agent's, or an ID its template does not fill"))
		return nil, status.Error(codes.PermissionDenied, msgEntryNotAuthorized)
	}
	if err := checkAudience(req.GetAudience()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	a := s.km.Active()
	if a == nil || a.JWT.Signer == nil {
		return nil, status.Error(codes.Unavailable, msgNoCA)
	}
	signer, err := s.activeJWTSigner(a)
	if err != nil {
		return nil, s.internal(ctx, c, "sign JWT-SVID", err)
	}
	now, ttl := s.clock.Now(), defaultTTL(e.JWTSVIDTTL, s.jwtTTL)
	token, exp, err := signer.Sign(now, sid, req.GetAudience(), ttl, a.JWTNotAfter)
	if err != nil {
		return nil, s.internal(ctx, c, "sign JWT-SVID", err)
	}
	s.metrics.Signed(metrics.KindJWT, s.clock.Now().Sub(now))
	if now.Add(ttl).After(a.JWTNotAfter) {
		s.log.LogAttrs(ctx, slog.LevelDebug, "JWT-SVID lifetime cut to its key's", slog.String(logkey.EntryID, e.ID), slog.Duration("ttl", ttl), slog.Time("key_not_after", a.JWTNotAfter))
	}
	return &nodev1.SignJWTSVIDResponse{Token: token, ExpiresAt: exp.Unix()}, nil
}

// forEachParallel calls fn(i) for every i in [0, n), on up to one
// goroutine per CPU, each taking items one at a time; a batch of chunk
// items or fewer runs on the calling goroutine alone. It stops taking
// items once ctx is done, and returns when every call it started has
// returned.
func forEachParallel(ctx context.Context, n, chunk int, fn func(i int)) {
	workers := min(runtime.GOMAXPROCS(0), (n+chunk-1)/chunk)
	var next atomic.Int64
	work := func() {
		for ctx.Err() == nil {
			i := int(next.Add(1)) - 1
			if i >= n {
				return
			}
			fn(i)
		}
	}
	var wg sync.WaitGroup
	for range workers - 1 {
		wg.Go(work)
	}
	work()
	wg.Wait()
}
