package nodeapi

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/x509ca"

	"writ.dev/writ/internal/logkey"
)

// DownstreamOwnerPrefix starts the ServerID of the CA key records that
// hold downstream entries' JWT keys: "downstream:<entry ID>". No server
// holds their private keys; the key manager publishes them like other
// servers' keys and drops them when they expire.
const DownstreamOwnerPrefix = "downstream:"

// MaxDownstreamJWTKeys is the most unexpired JWT keys one downstream
// entry may have published at once: a nested server has one or two (the
// current key and the next), so 4 leaves room for a restart with a lost
// key store while bounding what a compromised downstream can add to the
// bundle every workload downloads.
const MaxDownstreamJWTKeys = 4

// errKeyIDTaken refuses, inside the bundle update, a key ID the bundle
// holds for another owner.
var errKeyIDTaken = errors.New("key ID is taken")

// msgNotDownstream answers a downstream request for an entry the agent
// may not use or that is not downstream, whether or not it exists.
const msgNotDownstream = "entry is not a downstream entry of this agent"

// downstreamKeyID is the form of a downstream JWT key's ID (its kid).
var downstreamKeyID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// downstreamEntry returns the entry with this ID if the caller may act
// for it as a downstream CA: it is the caller's (as for SVID signing),
// downstream, and not a template.
func (s *Service) downstreamEntry(c *caller, id string) *entry.Entry {
	e := s.authorizedEntry(c, id)
	if e == nil || !e.Downstream || e.Template != "" {
		return nil
	}
	return e
}

// downstreamLimit is the longest lifetime a downstream CA or JWT key of e
// gets: the entry's X.509-SVID TTL, or the server's downstream default.
func (s *Service) downstreamLimit(e *entry.Entry) time.Duration {
	if e.X509SVIDTTL > 0 {
		return e.X509SVIDTTL
	}
	return s.downstreamTTL
}

// MintDownstreamX509CA signs an intermediate CA of the trust domain for a
// downstream entry of the caller. The CSR gives the public key; its only
// SAN may be the trust domain's ID. The lifetime asked for is cut to the
// entry's limit and to the signing CA's own validity; it is never refused
// for being too long.
func (h *handler) MintDownstreamX509CA(ctx context.Context, req *nodev1.MintDownstreamX509CARequest) (*nodev1.MintDownstreamX509CAResponse, error) {
	s := h.s
	c, err := s.callerFrom(ctx, true)
	if err != nil {
		return nil, err
	}
	e := s.downstreamEntry(c, req.GetEntryId())
	if e == nil {
		s.log.LogAttrs(ctx, slog.LevelWarn, "downstream CA refused", slog.String(logkey.SPIFFEID, c.id.String()), slog.String(logkey.EntryID, logEntryID(req.GetEntryId())), slog.String(logkey.Reason, "entry missing, not the agent's or not downstream"))
		return nil, status.Error(codes.PermissionDenied, msgNotDownstream)
	}
	if req.GetPreferredTtl() < 0 {
		return nil, status.Error(codes.InvalidArgument, "preferred TTL is negative")
	}
	pub, err := x509ca.CheckCACSR(req.GetCsr(), s.td)
	if err != nil {
		s.log.LogAttrs(ctx, slog.LevelWarn, "downstream CA refused", slog.String(logkey.EntryID, e.ID), slog.String(logkey.Reason, err.Error()))
		return nil, invalidArg("invalid CSR", err)
	}
	a := s.km.Active()
	if a == nil || a.X509 == nil {
		return nil, status.Error(codes.Unavailable, msgNoCA)
	}
	b, err := s.store.FetchBundle(ctx, s.td)
	if err != nil {
		return nil, s.internal(ctx, c, "fetch bundle", err)
	}
	now := s.clock.Now()
	limit := s.downstreamLimit(e)
	ttl := limit
	if p := time.Duration(req.GetPreferredTtl()) * time.Second; p > 0 && p < limit {
		ttl = p
	}
	cert, err := x509ca.SignCA(now, s.td, pub, a.X509, ttl)
	if err != nil {
		if errors.Is(err, x509ca.ErrParams) || errors.Is(err, x509ca.ErrKeyPolicy) {
			return nil, invalidArg("cannot sign the downstream CA", err)
		}
		return nil, s.internal(ctx, c, "sign downstream CA", err)
	}
	chain := make([]*x509.Certificate, 0, 1+len(a.X509.Chain))
	chain = append(append(chain, cert), a.X509.Chain...)
	if err := checkRoomBelow(now, chain, b.X509Authorities()); err != nil {
		// The server's own CA chain leaves no room for another CA: a
		// configuration problem of this server, not of the caller.
		s.log.LogAttrs(ctx, slog.LevelError, "cannot issue a downstream CA", slog.String(logkey.EntryID, e.ID), slog.String(logkey.Error, err.Error()))
		return nil, status.Error(codes.FailedPrecondition, "this server's CA chain cannot have a downstream CA below it: "+err.Error())
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "downstream CA signed", slog.String(logkey.SPIFFEID, c.id.String()), slog.String(logkey.EntryID, e.ID),
		slog.String("serial", cert.SerialNumber.String()), slog.Time("not_after", cert.NotAfter), slog.Bool("cut", req.GetPreferredTtl() > 0 && cert.NotAfter.Before(now.Add(time.Duration(req.GetPreferredTtl())*time.Second))))
	resp := &nodev1.MintDownstreamX509CAResponse{CaChain: a.X509.SVIDChain(cert.Raw)}
	for _, r := range b.X509Authorities() {
		resp.X509Authorities = append(resp.X509Authorities, r.Raw)
	}
	return resp, nil
}

// checkRoomBelow verifies, at now, the downstream CA chain[0] through the
// intermediates chain[1:] to one of roots, and checks that every
// certificate above it allows a CA below it that signs leaves: a path
// length constraint of at least the number of CAs below it.
func checkRoomBelow(now time.Time, chain, roots []*x509.Certificate) error {
	rootPool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	paths, err := chain[0].Verify(x509.VerifyOptions{Roots: rootPool, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return fmt.Errorf("the downstream CA does not verify against the bundle: %w", err)
	}
	// One path that leaves room is enough: relying parties find it.
	var last error
	for _, p := range paths {
		if last = roomBelow(p); last == nil {
			return nil
		}
	}
	return last
}

// roomBelow checks one verified path, the downstream CA first.
func roomBelow(p []*x509.Certificate) error {
	for j := 1; j < len(p); j++ {
		// Below p[j]: p[1..j-1] and the downstream CA, j CAs.
		if c := p[j]; c.BasicConstraintsValid && c.MaxPathLen >= 0 && (c.MaxPathLen > 0 || c.MaxPathLenZero) && c.MaxPathLen < j {
			return fmt.Errorf("%q has path length %d; a downstream CA needs %d", c.Subject.String(), c.MaxPathLen, j)
		}
	}
	return nil
}

// PublishDownstreamJWTAuthority records a downstream entry's JWT public
// key (as a CA key record owned by "downstream:<entry ID>") and adds it to
// the trust domain's bundle. Its expiry is cut to the entry's limit; the
// key manager drops it from the bundle once it has expired. A key ID the
// bundle or a record holds for another owner (another entry, a server,
// or the parent deployment of a nested server, whose keys have no record
// here) is refused with AlreadyExists, checked again inside the bundle
// update; beyond MaxDownstreamJWTKeys unexpired keys of the entry, a new
// one is refused with ResourceExhausted.
func (h *handler) PublishDownstreamJWTAuthority(ctx context.Context, req *nodev1.PublishDownstreamJWTAuthorityRequest) (*nodev1.PublishDownstreamJWTAuthorityResponse, error) {
	s := h.s
	c, err := s.callerFrom(ctx, true)
	if err != nil {
		return nil, err
	}
	e := s.downstreamEntry(c, req.GetEntryId())
	if e == nil {
		s.log.LogAttrs(ctx, slog.LevelWarn, "downstream JWT key refused", slog.String(logkey.SPIFFEID, c.id.String()), slog.String(logkey.EntryID, logEntryID(req.GetEntryId())), slog.String(logkey.Reason, "entry missing, not the agent's or not downstream"))
		return nil, status.Error(codes.PermissionDenied, msgNotDownstream)
	}
	if !downstreamKeyID.MatchString(req.GetKeyId()) {
		return nil, status.Error(codes.InvalidArgument, "key ID must be 1 to 64 of [A-Za-z0-9_-]")
	}
	if len(req.GetPublicKey()) > x509ca.MaxCSRSize {
		return nil, status.Error(codes.InvalidArgument, "public key too large")
	}
	pub, err := x509.ParsePKIXPublicKey(req.GetPublicKey())
	if err != nil {
		return nil, invalidArg("invalid public key", err)
	}
	if err := x509ca.CheckPublicKey(pub); err != nil {
		return nil, invalidArg("public key not allowed", err)
	}
	now := s.clock.Now()
	exp := time.Unix(req.GetExpiresAt(), 0)
	if !exp.After(now) {
		return nil, status.Error(codes.InvalidArgument, "the key has expired")
	}
	if limit := now.Add(s.downstreamLimit(e)).Truncate(time.Second); exp.After(limit) {
		exp = limit
	}
	owner := DownstreamOwnerPrefix + e.ID
	kid := req.GetKeyId()
	// One publication at a time on this server, so that the checks below
	// and the record are not raced by another call here; the bundle
	// update checks again against servers sharing the store.
	s.publishMu.Lock()
	defer s.publishMu.Unlock()
	keys, err := s.store.ListCAKeys(ctx)
	if err != nil {
		return nil, s.internal(ctx, c, "list CA keys", err)
	}
	owned, live := false, 0
	for _, k := range keys {
		switch {
		case k.ID == kid && k.ServerID != owner:
			return nil, s.keyIDTaken(ctx, e.ID, kid, "key ID taken by another owner")
		case k.ID == kid:
			owned = true
		case k.ServerID == owner && k.Kind == datastore.CAKeyJWT && now.Before(k.NotAfter):
			live++
		}
	}
	if !owned && live >= MaxDownstreamJWTKeys {
		s.log.LogAttrs(ctx, slog.LevelWarn, "downstream JWT key refused", slog.String(logkey.EntryID, e.ID), slog.String(logkey.KeyID, kid), slog.String(logkey.Reason, "too many unexpired keys"))
		return nil, status.Errorf(codes.ResourceExhausted, "the entry has %d unexpired JWT keys, the most allowed", live)
	}
	if !owned {
		cur, err := s.store.FetchBundle(ctx, s.td)
		if err != nil && !errors.Is(err, datastore.ErrNotFound) {
			return nil, s.internal(ctx, c, "fetch bundle", err)
		}
		if _, ok := bundleJWTKey(cur, kid); ok {
			return nil, s.keyIDTaken(ctx, e.ID, kid, "key ID in the bundle for another owner")
		}
	}
	rec := &datastore.CAKey{
		ID:           kid,
		Kind:         datastore.CAKeyJWT,
		State:        datastore.CAKeyRetired,
		ServerID:     owner,
		KeyType:      keyTypeName(pub),
		PublicKeyDER: req.GetPublicKey(),
		NotBefore:    now.Add(-x509ca.Backdate),
		NotAfter:     exp,
	}
	// Recorded first, so that the key manager keeps it published (and
	// drops it when it expires) whatever happens to this call.
	if err := s.store.PutCAKey(ctx, rec); err != nil {
		return nil, s.internal(ctx, c, "record downstream JWT key", err)
	}
	b, err := s.store.UpdateBundle(ctx, s.td, func(old *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
		if old == nil {
			return nil, errors.New("no trust bundle yet")
		}
		cur, ok := old.FindJWTAuthority(kid)
		if ok && !owned {
			return nil, errKeyIDTaken
		}
		if ok && equalKeys(cur, pub) {
			return old, nil
		}
		nb := old.Clone()
		nb.RemoveJWTAuthority(kid)
		if err := nb.AddJWTAuthority(kid, pub); err != nil {
			return nil, err
		}
		seq, _ := old.SequenceNumber()
		nb.SetSequenceNumber(seq + 1)
		return nb, nil
	})
	if errors.Is(err, errKeyIDTaken) {
		// Another server published the key ID meanwhile: the record just
		// made must not make the key manager drop that key at its expiry.
		if derr := s.store.DeleteCAKey(ctx, kid); derr != nil {
			s.log.LogAttrs(ctx, slog.LevelError, "could not delete the record of a refused downstream JWT key", slog.String(logkey.EntryID, e.ID), slog.String(logkey.KeyID, kid), slog.String(logkey.Error, derr.Error()))
		}
		return nil, s.keyIDTaken(ctx, e.ID, kid, "key ID published meanwhile for another owner")
	}
	if err != nil {
		return nil, s.internal(ctx, c, "publish downstream JWT key", err)
	}
	raw, err := b.Marshal()
	if err != nil {
		return nil, s.internal(ctx, c, "encode bundle", err)
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "downstream JWT key published", slog.String(logkey.SPIFFEID, c.id.String()), slog.String(logkey.EntryID, e.ID), slog.String(logkey.KeyID, kid), slog.Time("not_after", exp))
	return &nodev1.PublishDownstreamJWTAuthorityResponse{ExpiresAt: exp.Unix(), Bundle: raw}, nil
}

// keyIDTaken logs and returns the refusal of a key ID another owner holds.
func (s *Service) keyIDTaken(ctx context.Context, entryID, kid, reason string) error {
	s.log.LogAttrs(ctx, slog.LevelWarn, "downstream JWT key refused", slog.String(logkey.EntryID, entryID), slog.String(logkey.KeyID, kid), slog.String(logkey.Reason, reason))
	return status.Error(codes.AlreadyExists, "key ID is taken")
}

// bundleJWTKey returns the JWT key of b under kid (b may be nil).
func bundleJWTKey(b *spiffebundle.Bundle, kid string) (crypto.PublicKey, bool) {
	if b == nil {
		return nil, false
	}
	return b.FindJWTAuthority(kid)
}

// equalKeys reports whether two public keys are the same.
func equalKeys(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// keyTypeName names a public key's type as key records do.
func keyTypeName(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return "ec-" + strings.ToLower(strings.ReplaceAll(k.Curve.Params().Name, "-", ""))
	case *rsa.PublicKey:
		return fmt.Sprintf("rsa-%d", k.N.BitLen())
	}
	return ""
}
