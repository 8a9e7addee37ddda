package admin

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/keymanager"
)

// CAManager is the key manager of the server that serves the admin API
// (see keymanager.Manager for what each operation does and refuses).
type CAManager interface {
	Keys(ctx context.Context) ([]keymanager.KeyInfo, error)
	Prepare(ctx context.Context, kind datastore.CAKeyKind) (keymanager.KeyInfo, error)
	Activate(ctx context.Context, kind datastore.CAKeyKind, id string, force bool) (keymanager.KeyInfo, error)
	Rotate(ctx context.Context, beforeActivate func(context.Context) error) ([]keymanager.KeyInfo, error)
	Taint(ctx context.Context, kind datastore.CAKeyKind, id string) (keymanager.KeyInfo, error)
	Revoke(ctx context.Context, kind datastore.CAKeyKind, id string, opts keymanager.RevokeOptions) (keymanager.KeyInfo, error)
}

// BundlePusher reports when the agents with a Sync stream open to this
// server have acknowledged a bundle (nodeapi.Service).
type BundlePusher interface {
	WaitBundleAcked(ctx context.Context, seq uint64) (int, error)
}

// Bounds of RotateRequest.wait_timeout_ms.
const (
	DefaultRotateWaitTimeout = 30 * time.Second
	MaxRotateWaitTimeout     = time.Hour
)

// State names shown to operators; a retired key is "old".
const (
	StatePrepared = "prepared"
	StateActive   = "active"
	StateOld      = "old"
	StateTainted  = "tainted"
)

// maxKeyIDLength bounds a key ID in a request.
const maxKeyIDLength = 128

// caService serves adminv1.CAService.
type caService struct {
	adminv1.UnimplementedCAServiceServer
	s *Service
}

// caBegin starts a CA call: the call, the key manager, and the kind.
func (cs *caService) caBegin(ctx context.Context, kind string, needKind bool) (*call, datastore.CAKeyKind, error) {
	s := cs.s
	c, err := s.begin(ctx)
	if err != nil {
		return nil, "", err
	}
	if s.ca == nil {
		return c, "", status.Error(codes.Unavailable, "this server does not manage CA keys")
	}
	k := datastore.CAKeyKind(kind)
	if kind == "" && !needKind {
		return c, "", nil
	}
	if err := keymanager.CheckKind(k); err != nil {
		return c, "", invalidf("invalid kind \"%s\": want x509 or jwt", boundedPrintable(kind))
	}
	c.keyKind = kind
	return c, k, nil
}

// checkKeyID checks the form of a key ID from a request: lowercase hex.
func checkKeyID(id string) error {
	if id == "" {
		return invalidf("key ID is required")
	}
	if len(id) > maxKeyIDLength {
		return invalidf("key ID is longer than %d characters", maxKeyIDLength)
	}
	for _, r := range id {
		if (r < '0' || r > '9') && (r < 'a' || r > 'f') {
			return invalidf("invalid key ID \"%s\": want lowercase hexadecimal", boundedPrintable(id))
		}
	}
	return nil
}

func boundedPrintable(s string) string {
	if len(s) > maxKeyIDLength {
		s = s[:maxKeyIDLength] + "..."
	}
	return entry.Printable(s)
}

// caError maps a key manager error to what the caller sees.
func (s *Service) caError(ctx context.Context, op string, err error) error {
	switch {
	case errors.Is(err, keymanager.ErrKind):
		return invalidf("%s", err.Error())
	case errors.Is(err, keymanager.ErrUnknownKey):
		return status.Error(codes.NotFound, boundMessage(err.Error()))
	case errors.Is(err, keymanager.ErrKeyState), errors.Is(err, keymanager.ErrTooEarly), errors.Is(err, keymanager.ErrNotOwner):
		return status.Error(codes.FailedPrecondition, boundMessage(err.Error()))
	case errors.Is(err, keymanager.ErrAuthority):
		// An upstream CA that is down or refused: the operator needs to
		// know which (the message names no secret).
		return status.Error(codes.Unavailable, boundMessage(err.Error()))
	}
	return s.internal(ctx, op, err)
}

// authorityToWire converts a key for the API.
func authorityToWire(k keymanager.KeyInfo) *adminv1.Authority {
	a := &adminv1.Authority{
		Kind:          string(k.Kind),
		Id:            k.ID,
		State:         stateName(k.State),
		NotBefore:     k.NotBefore.Unix(),
		NotAfter:      k.NotAfter.Unix(),
		UpstreamChain: k.UpstreamChain,
		ServerId:      k.ServerID,
	}
	if !k.SignedUntil.IsZero() {
		a.SignedUntil = k.SignedUntil.Unix()
	}
	return a
}

func stateName(s datastore.CAKeyState) string {
	switch s {
	case datastore.CAKeyPrepared:
		return StatePrepared
	case datastore.CAKeyActive:
		return StateActive
	case datastore.CAKeyRetired:
		return StateOld
	case datastore.CAKeyTainted:
		return StateTainted
	}
	return string(s)
}

// ListAuthorities lists the CA keys of every server.
func (cs *caService) ListAuthorities(ctx context.Context, req *adminv1.ListAuthoritiesRequest) (*adminv1.ListAuthoritiesResponse, error) {
	_, kind, err := cs.caBegin(ctx, req.GetKind(), false)
	if err != nil {
		return nil, err
	}
	keys, err := cs.s.ca.Keys(ctx)
	if err != nil {
		return nil, cs.s.caError(ctx, "list CA keys", err)
	}
	resp := &adminv1.ListAuthoritiesResponse{}
	for _, k := range keys {
		if kind == "" || k.Kind == kind {
			resp.Authorities = append(resp.Authorities, authorityToWire(k))
		}
	}
	return resp, nil
}

// PrepareAuthority prepares a key of this server.
func (cs *caService) PrepareAuthority(ctx context.Context, req *adminv1.PrepareAuthorityRequest) (*adminv1.Authority, error) {
	c, kind, err := cs.caBegin(ctx, req.GetKind(), true)
	if err != nil {
		return nil, err
	}
	k, err := cs.s.ca.Prepare(ctx, kind)
	if err != nil {
		return nil, cs.s.caError(ctx, "prepare CA key", err)
	}
	c.keyID = k.ID
	return authorityToWire(k), nil
}

// ActivateAuthority activates a prepared key of this server.
func (cs *caService) ActivateAuthority(ctx context.Context, req *adminv1.ActivateAuthorityRequest) (*adminv1.Authority, error) {
	c, kind, err := cs.caBegin(ctx, req.GetKind(), true)
	if err != nil {
		return nil, err
	}
	if err := checkKeyID(req.GetId()); err != nil {
		return nil, err
	}
	c.keyID, c.forced = req.GetId(), req.GetForce()
	k, err := cs.s.ca.Activate(ctx, kind, req.GetId(), req.GetForce())
	if err != nil {
		return nil, cs.s.caError(ctx, "activate CA key", err)
	}
	return authorityToWire(k), nil
}

// TaintAuthority taints a key.
func (cs *caService) TaintAuthority(ctx context.Context, req *adminv1.TaintAuthorityRequest) (*adminv1.Authority, error) {
	c, kind, err := cs.caBegin(ctx, req.GetKind(), true)
	if err != nil {
		return nil, err
	}
	if err := checkKeyID(req.GetId()); err != nil {
		return nil, err
	}
	c.keyID = req.GetId()
	k, err := cs.s.ca.Taint(ctx, kind, req.GetId())
	if err != nil {
		return nil, cs.s.caError(ctx, "taint CA key", err)
	}
	return authorityToWire(k), nil
}

// RevokeAuthority revokes a tainted key.
func (cs *caService) RevokeAuthority(ctx context.Context, req *adminv1.RevokeAuthorityRequest) (*adminv1.Authority, error) {
	c, kind, err := cs.caBegin(ctx, req.GetKind(), true)
	if err != nil {
		return nil, err
	}
	if err := checkKeyID(req.GetId()); err != nil {
		return nil, err
	}
	c.keyID, c.forced = req.GetId(), req.GetForce()
	maxTTL, err := cs.s.maxX509SVIDTTL(ctx)
	if err != nil {
		return nil, err
	}
	k, err := cs.s.ca.Revoke(ctx, kind, req.GetId(), keymanager.RevokeOptions{Force: req.GetForce(), MaxX509SVIDTTL: maxTTL})
	if err != nil {
		return nil, cs.s.caError(ctx, "revoke CA key", err)
	}
	return authorityToWire(k), nil
}

// maxX509SVIDTTL is the longest X.509-SVID lifetime the server gives: its
// default, or an entry's longer TTL. (An entry whose TTL was lowered since
// it was last signed for is not accounted for.)
func (s *Service) maxX509SVIDTTL(ctx context.Context) (time.Duration, error) {
	ttl := s.x509SVIDTTL
	entries, err := s.store.ListEntries(ctx, datastore.EntryFilter{})
	if err != nil {
		return 0, s.internal(ctx, "list entries", err)
	}
	for _, e := range entries {
		ttl = max(ttl, e.X509SVIDTTL)
	}
	return ttl, nil
}

// Rotate makes new keys of both kinds active on this server.
func (cs *caService) Rotate(ctx context.Context, req *adminv1.RotateRequest) (*adminv1.RotateResponse, error) {
	c, _, err := cs.caBegin(ctx, "", false)
	if err != nil {
		return nil, err
	}
	s := cs.s
	resp := &adminv1.RotateResponse{}
	var before func(context.Context) error
	if req.GetWait() {
		if s.pusher == nil {
			return nil, status.Error(codes.Unavailable, "this server cannot report what agents acknowledged")
		}
		timeout := time.Duration(req.GetWaitTimeoutMs()) * time.Millisecond
		switch {
		case req.GetWaitTimeoutMs() < 0 || timeout > MaxRotateWaitTimeout:
			return nil, invalidf("wait timeout must be positive and at most %s", MaxRotateWaitTimeout)
		case timeout == 0:
			timeout = DefaultRotateWaitTimeout
		}
		before = func(ctx context.Context) error {
			b, err := s.store.FetchBundle(ctx, s.td)
			if err != nil {
				return fmt.Errorf("fetch bundle: %w", err)
			}
			seq, _ := b.SequenceNumber()
			wctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			n, err := s.pusher.WaitBundleAcked(wctx, seq)
			if err != nil {
				return errWaitPush{fmt.Errorf("after %s, %w", timeout, err)}
			}
			resp.StreamsNotified = int32(min(n, 1<<30))
			return nil
		}
	}
	keys, err := s.ca.Rotate(ctx, before)
	var werr errWaitPush
	if errors.As(err, &werr) {
		return nil, status.Errorf(codes.DeadlineExceeded, "%s; the new keys are published but not activated: run writ ca rotate again (it takes the prepared keys), with a longer --wait-timeout or without --wait", boundMessage(werr.err.Error()))
	}
	if err != nil {
		return nil, s.caError(ctx, "rotate CA keys", err)
	}
	for _, k := range keys {
		resp.Activated = append(resp.Activated, authorityToWire(k))
		if c.keyID != "" {
			c.keyID += ","
		}
		c.keyID += k.ID
	}
	return resp, nil
}

// errWaitPush is a failed wait for the bundle push.
type errWaitPush struct{ err error }

func (e errWaitPush) Error() string { return e.err.Error() }
func (e errWaitPush) Unwrap() error { return e.err }
