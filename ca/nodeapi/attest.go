package nodeapi

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/attest"
	"writ.dev/writ/ca/attest/jointoken"
	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/x509ca"

	"writ.dev/writ/internal/logkey"
	"writ.dev/writ/internal/metrics"
)

// Messages of refused attestations and renewals.
const (
	// msgBadToken is the one answer to a join token that does not exist,
	// has expired or has been used: which of the three is not said.
	msgBadToken = "join token is invalid, expired or already used"
	// msgNoIdentity answers an attestation that cannot name a valid
	// agent.
	msgNoIdentity = "no identity issued"
	// msgNoCA answers calls that need a CA while there is none.
	msgNoCA = "no signing CA available"
)

// Errors that agent record updates return from inside UpdateAgent.
var (
	errAgentBanned  = errors.New("agent is banned")
	errAgentChanged = errors.New("agent record names another certificate")
	// errAgentOtherType: the agent ID belongs to an agent attested by
	// another method, which this attestation may not take over.
	errAgentOtherType = errors.New("agent ID is held by an agent of another attestation type")
)

// maxMessage bounds error messages that quote a parser's detail.
const maxMessage = 256

func invalidArg(prefix string, err error) error {
	msg := prefix + ": " + strings.TrimPrefix(err.Error(), x509ca.ErrCSR.Error()+": ")
	if len(msg) > maxMessage {
		msg = strings.ToValidUTF8(msg[:maxMessage-3], "") + "..."
	}
	return status.Error(codes.InvalidArgument, msg)
}

func peerAddr(ctx context.Context) slog.Attr {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return slog.String(logkey.Peer, p.Addr.String())
	}
	return slog.String(logkey.Peer, "")
}

// NodeAttestor is the server half of a node attestation method: it reads
// the payload the agent sent first, may challenge the agent (each call of
// challenge sends one challenge and returns the agent's answer), and
// returns the agent's SPIFFE ID and node selectors. Refusals wrap one of
// the ca/attest errors (or ErrBadJoinToken); their detail is logged, not
// shown to the agent.
type NodeAttestor interface {
	Type() string
	Attest(ctx context.Context, payload []byte, challenge attest.Challenger) (*attest.Result, error)
}

// ErrBadJoinToken: the join token does not exist, has expired or has been
// used.
var ErrBadJoinToken = errors.New("join token is invalid, expired or already used")

// Bounds of an AttestNode stream.
const (
	// maxChallenges is the most challenges one attestation may send.
	maxChallenges = 4
	// challengeTimeout is how long the server waits for the agent's
	// answer to a challenge.
	challengeTimeout = 10 * time.Second
	// maxAttestationType bounds the attestation type's name.
	maxAttestationType = 64
)

// joinTokenAttestor redeems join tokens: the payload is the token, which
// is consumed (once) from the store.
type joinTokenAttestor struct {
	store interface {
		ConsumeJoinToken(ctx context.Context, hash string, now time.Time) (*datastore.JoinToken, error)
	}
	clock   clock.Clock
	metrics *metrics.Server
}

func (j *joinTokenAttestor) Type() string { return AttestationTypeJoinToken }

func (j *joinTokenAttestor) Attest(ctx context.Context, payload []byte, _ attest.Challenger) (*attest.Result, error) {
	if len(payload) == 0 || len(payload) > maxJoinTokenLength {
		return nil, fmt.Errorf("%w: malformed join token", ErrBadJoinToken)
	}
	jt, err := j.store.ConsumeJoinToken(ctx, jointoken.Hash(string(payload)), j.clock.Now())
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		j.metrics.JoinToken(metrics.TokenRefused)
		return nil, fmt.Errorf("%w: unknown or already used join token", ErrBadJoinToken)
	case errors.Is(err, datastore.ErrExpired):
		j.metrics.JoinToken(metrics.TokenRefused)
		return nil, fmt.Errorf("%w: expired join token", ErrBadJoinToken)
	case err != nil:
		return nil, fmt.Errorf("consume join token: %w", err)
	}
	j.metrics.JoinToken(metrics.TokenConsumed)
	return &attest.Result{AgentID: jt.SPIFFEID}, nil
}

// Attest redeems a join token for an agent SVID (the join_token attestor
// without a stream, for agents that predate AttestNode). The CSR is
// checked before the token is consumed, so a bad CSR does not use the
// token up; a token for a banned agent is consumed all the same.
func (h *handler) Attest(ctx context.Context, req *nodev1.AttestRequest) (*nodev1.AttestResponse, error) {
	c, err := h.s.callerFrom(ctx, false)
	if err != nil {
		return nil, err
	}
	res, err := h.s.attestNode(ctx, c, AttestationTypeJoinToken, []byte(req.GetJoinToken()), req.GetCsr(), func(context.Context, []byte) ([]byte, error) {
		return nil, fmt.Errorf("%w: the join token attestor sent a challenge", attest.ErrInvalidPayload)
	})
	if err != nil {
		return nil, err
	}
	return &nodev1.AttestResponse{SvidChain: res.SvidChain, Bundle: res.Bundle}, nil
}

// AttestNode attests the agent's node with the attestor its first message
// names, sending the attestor's challenges over the stream, and ends with
// the agent's SVID.
func (h *handler) AttestNode(stream nodev1.NodeService_AttestNodeServer) error {
	s := h.s
	ctx := stream.Context()
	c, err := s.callerFrom(ctx, false)
	if err != nil {
		return err
	}
	first, err := s.recvWithin(stream)
	if err != nil {
		return err
	}
	if typ := first.GetAttestationType(); typ == "" || len(typ) > maxAttestationType || len(first.GetChallengeResponse()) != 0 {
		return status.Error(codes.InvalidArgument, "the first message must name the attestation type (at most 64 bytes) and carry no challenge response")
	}
	if len(first.GetPayload()) > attest.MaxPayload {
		return status.Errorf(codes.InvalidArgument, "attestation payload is larger than %d bytes", attest.MaxPayload)
	}
	n := 0
	challenge := func(ctx context.Context, ch []byte) ([]byte, error) {
		if n++; n > maxChallenges {
			return nil, fmt.Errorf("%w: more than %d challenges", attest.ErrInvalidPayload, maxChallenges)
		}
		if err := stream.Send(&nodev1.AttestNodeResponse{Challenge: ch}); err != nil {
			return nil, fmt.Errorf("%w: send challenge: %w", attest.ErrInvalidPayload, err)
		}
		m, err := s.recvWithin(stream)
		if err != nil {
			return nil, fmt.Errorf("%w: no answer to the challenge: %w", attest.ErrInvalidPayload, err)
		}
		r := m.GetChallengeResponse()
		if len(r) == 0 || len(r) > attest.MaxPayload || m.GetAttestationType() != "" || len(m.GetPayload()) != 0 || len(m.GetCsr()) != 0 {
			return nil, fmt.Errorf("%w: malformed challenge response", attest.ErrInvalidPayload)
		}
		return r, nil
	}
	res, err := s.attestNode(ctx, c, first.GetAttestationType(), first.GetPayload(), first.GetCsr(), challenge)
	if err != nil {
		return err
	}
	return stream.Send(res)
}

// recvWithin receives the next message of an AttestNode stream, waiting at
// most challengeTimeout.
func (s *Service) recvWithin(stream nodev1.NodeService_AttestNodeServer) (*nodev1.AttestNodeRequest, error) {
	type result struct {
		m   *nodev1.AttestNodeRequest
		err error
	}
	ch := make(chan result, 1)
	go func() {
		m, err := stream.Recv()
		ch <- result{m, err}
	}()
	t := s.clock.NewTimer(challengeTimeout)
	defer t.Stop()
	select {
	case r := <-ch:
		return r.m, r.err
	case <-t.C():
		// Returning ends the stream, which ends the Recv.
		return nil, status.Error(codes.DeadlineExceeded, "no attestation message within "+challengeTimeout.String())
	}
}

// attestNode runs the attestor typ and signs the agent's SVID.
func (s *Service) attestNode(ctx context.Context, c *caller, typ string, payload, csr []byte, challenge attest.Challenger) (*nodev1.AttestNodeResponse, error) {
	a, ok := s.attestors[typ]
	if !ok {
		s.refuseAttest(ctx, typ, "attestation type not enabled on this server")
		return nil, status.Errorf(codes.PermissionDenied, "%s: node attestation type %q is not enabled on this server", msgNoIdentity, entry.Printable(typ))
	}
	pub, err := x509ca.CheckCSR(csr)
	if err != nil {
		return nil, invalidArg("invalid CSR", err)
	}
	// Refuse before consuming a token if the server could not finish.
	b := s.idx.bundle.Load()
	if act := s.km.Active(); act == nil || act.X509 == nil || b == nil || b.json == nil {
		return nil, status.Error(codes.Unavailable, msgNoCA)
	}
	res, err := a.Attest(ctx, payload, challenge)
	if err != nil {
		s.refuseAttest(ctx, typ, err.Error())
		switch {
		case errors.Is(err, ErrBadJoinToken):
			return nil, status.Error(codes.PermissionDenied, msgBadToken)
		case errors.Is(err, attest.ErrNotTrusted):
			return nil, status.Errorf(codes.PermissionDenied, "%s: the %s credential is not trusted by the server (expired, another CA, wrong kind or key usage; the server log says which)", msgNoIdentity, typ)
		case errors.Is(err, attest.ErrProofFailed):
			return nil, status.Errorf(codes.PermissionDenied, "%s: %s proof of possession failed", msgNoIdentity, typ)
		case errors.Is(err, attest.ErrInvalidPayload):
			return nil, status.Errorf(codes.PermissionDenied, "%s: malformed %s attestation", msgNoIdentity, typ)
		case errors.Is(err, attest.ErrBadAgentID):
			return nil, status.Errorf(codes.PermissionDenied, "%s: the %s credential makes no valid agent ID", msgNoIdentity, typ)
		}
		return nil, s.internal(ctx, c, "attest node", err)
	}
	id := res.AgentID
	if err := s.checkAgentID(id); err != nil {
		s.log.LogAttrs(ctx, slog.LevelError, "node attestor named an invalid agent ID; no identity issued", peerAddr(ctx), slog.String(logkey.AttestationType, typ), slog.String(logkey.Reason, err.Error()))
		return nil, status.Error(codes.PermissionDenied, msgNoIdentity)
	}
	sel := attest.SortSelectors(slices.Clone(res.Selectors))

	now := s.clock.Now()
	chain, leaf, err := s.signAgentSVID(now, id, pub)
	if err != nil {
		return nil, s.internal(ctx, c, "sign agent SVID", err)
	}
	serial := leaf.SerialNumber.String()
	reattested, err := s.putAttestedAgent(ctx, id, typ, sel, serial, leaf.NotAfter, now)
	if err != nil {
		if errors.Is(err, errAgentBanned) {
			reason := "agent is banned"
			if typ == AttestationTypeJoinToken {
				reason += "; its join token is used up"
			}
			s.log.LogAttrs(ctx, slog.LevelWarn, "attestation refused", peerAddr(ctx), slog.String(logkey.AttestationType, typ), slog.String(logkey.SPIFFEID, id.String()), slog.String(logkey.Reason, reason))
			return nil, status.Error(codes.PermissionDenied, msgBanned)
		}
		if errors.Is(err, errAgentOtherType) {
			s.log.LogAttrs(ctx, slog.LevelWarn, "attestation refused", peerAddr(ctx), slog.String(logkey.AttestationType, typ), slog.String(logkey.SPIFFEID, id.String()), slog.String(logkey.Reason, err.Error()+"; evict that agent first to hand its ID over"))
			return nil, status.Errorf(codes.PermissionDenied, "%s: the agent ID is held by an agent of another attestation type", msgNoIdentity)
		}
		return nil, s.internal(ctx, c, "store agent", err)
	}
	msg := "agent attested"
	if reattested {
		msg = "agent attested again; its earlier SVIDs no longer authenticate it"
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, msg, peerAddr(ctx), slog.String(logkey.AttestationType, typ), slog.String(logkey.SPIFFEID, id.String()), slog.String(logkey.Serial, serial), slog.Time(logkey.NotAfter, leaf.NotAfter), slog.Int("node_selectors", len(sel)))
	return &nodev1.AttestNodeResponse{SvidChain: chain, Bundle: b.json, NodeSelectors: selectorStrings(sel)}, nil
}

func selectorStrings(sel []entry.Selector) []string {
	out := make([]string, len(sel))
	for i, x := range sel {
		out[i] = x.String()
	}
	return out
}

func (s *Service) refuseAttest(ctx context.Context, typ, reason string) {
	s.log.LogAttrs(ctx, slog.LevelWarn, "attestation refused", peerAddr(ctx), slog.String(logkey.AttestationType, entry.Printable(typ)), slog.String(logkey.Reason, reason))
}

// checkAgentID refuses agent IDs the server must never issue, whatever a
// join token says: IDs of another trust domain, or outside /writ/agent/
// (which also excludes the server's own and every workload's).
func (s *Service) checkAgentID(id spiffeid.ID) error {
	switch {
	case id.IsZero():
		return errors.New("no SPIFFE ID")
	case id.TrustDomain() != s.td:
		return fmt.Errorf("SPIFFE ID %q is not in trust domain %q", id.String(), s.td.Name())
	case id.Path() == "":
		return fmt.Errorf("SPIFFE ID %q has no path", id.String())
	case id == s.serverID:
		return fmt.Errorf("SPIFFE ID %q is the server's", id.String())
	case !entry.IsAgentID(id):
		return fmt.Errorf("SPIFFE ID %q is not under %s", id.String(), entry.AgentPathPrefix)
	}
	return nil
}

// putAttestedAgent creates the agent's record, or replaces it unless it
// is banned or was attested by another method (so that an x509pop path
// template cannot take over a join-token agent's ID), and reports whether
// it replaced one. A replaced record keeps
// its CreatedAt and no longer names any earlier certificate.
func (s *Service) putAttestedAgent(ctx context.Context, id spiffeid.ID, typ string, sel []entry.Selector, serial string, notAfter, now time.Time) (bool, error) {
	for range 3 {
		_, err := s.store.UpdateAgent(ctx, id, func(a *datastore.Agent) error {
			if a.Banned {
				return errAgentBanned
			}
			if a.AttestationType != "" && a.AttestationType != typ {
				return errAgentOtherType
			}
			*a = datastore.Agent{
				SPIFFEID:        id,
				AttestationType: typ,
				Selectors:       sel,
				SerialNumber:    serial,
				CertNotAfter:    notAfter,
				CreatedAt:       a.CreatedAt,
				UpdatedAt:       now,
			}
			return nil
		})
		if !errors.Is(err, datastore.ErrNotFound) {
			return err == nil, err
		}
		err = s.store.CreateAgent(ctx, &datastore.Agent{
			SPIFFEID:        id,
			AttestationType: typ,
			Selectors:       sel,
			SerialNumber:    serial,
			CertNotAfter:    notAfter,
			CreatedAt:       now,
			UpdatedAt:       now,
		})
		if !errors.Is(err, datastore.ErrAlreadyExists) {
			return false, err
		}
		// Created meanwhile by another attestation: update that.
	}
	return false, errors.New("agent record keeps changing")
}

// signAgentSVID signs an agent X.509-SVID for id and returns its chain
// (leaf first, no root) and the parsed leaf.
func (s *Service) signAgentSVID(now time.Time, id spiffeid.ID, pub crypto.PublicKey) ([][]byte, *x509.Certificate, error) {
	a := s.km.Active()
	if a == nil || a.X509 == nil {
		return nil, nil, errors.New("no active X.509 CA")
	}
	began := s.clock.Now()
	der, err := x509ca.SignX509SVID(now, a.X509, x509ca.SVIDParams{ID: id, TTL: s.x509TTL, PublicKey: pub, Agent: true})
	if err != nil {
		return nil, nil, err
	}
	s.metrics.Signed(metrics.KindAgent, s.clock.Now().Sub(began))
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse agent SVID: %w", err)
	}
	return a.X509.SVIDChain(der), leaf, nil
}

// RenewAgent signs a new agent SVID for the caller and records it as the
// agent's current certificate; the certificate the caller authenticated
// with stays valid as the previous one until the next renewal.
func (h *handler) RenewAgent(ctx context.Context, req *nodev1.RenewAgentRequest) (*nodev1.RenewAgentResponse, error) {
	s := h.s
	c, err := s.callerFrom(ctx, true)
	if err != nil {
		return nil, err
	}
	pub, err := x509ca.CheckCSR(req.GetCsr())
	if err != nil {
		return nil, invalidArg("invalid CSR", err)
	}
	now := s.clock.Now()
	chain, leaf, err := s.signAgentSVID(now, c.id, pub)
	if err != nil {
		return nil, s.internal(ctx, c, "sign agent SVID", err)
	}
	serial := leaf.SerialNumber.String()
	_, err = s.store.UpdateAgent(ctx, c.id, func(a *datastore.Agent) error {
		switch {
		case a.Banned:
			return errAgentBanned
		case a.SerialNumber != c.serial && a.PrevSerialNumber != c.serial && !mayBeUnrecorded(c.id, c.chain[0], a):
			// (A certificate signed after the record last changed is
			// one renewed while the datastore was unavailable, and
			// authenticated as such.)
			return errAgentChanged
		}
		a.PrevSerialNumber = c.serial
		a.SerialNumber = serial
		a.CertNotAfter = leaf.NotAfter
		// Never backwards: recordRenewal may have stored the signing
		// time of a server whose clock runs ahead.
		if now.After(a.UpdatedAt) {
			a.UpdatedAt = now
		}
		return nil
	})
	switch {
	case errors.Is(err, errAgentBanned):
		return nil, s.deny(ctx, c.method, c.id, c.serial, "agent was banned", msgBanned)
	case errors.Is(err, errAgentChanged):
		return nil, s.deny(ctx, c.method, c.id, c.serial, "agent record names other certificates", msgNotAttested)
	case errors.Is(err, datastore.ErrNotFound):
		return nil, s.deny(ctx, c.method, c.id, c.serial, "agent was evicted", msgNotAttested)
	case errors.Is(err, datastore.ErrUnavailable):
		// Decide from the last agent record read: the new certificate
		// authenticates the agent as one signed after the record last
		// changed, at this server and the others, and is recorded at
		// the agent's first call once the datastore is back.
		if !s.idx.readRecently() {
			s.log.LogAttrs(ctx, slog.LevelWarn, "agent SVID renewal refused: the datastore is unavailable and the agent list was last read more than an agent SVID TTL ago", slog.String(logkey.SPIFFEID, c.id.String()), slog.String(logkey.Serial, c.serial))
			return nil, status.Error(codes.Unavailable, msgUnavailable)
		}
		switch s.idx.certStatus(c.id, c.chain[0]) {
		case agentStale:
			return nil, status.Error(codes.Unavailable, msgUnavailable)
		case agentBanned:
			return nil, s.deny(ctx, c.method, c.id, c.serial, "agent is banned", msgBanned)
		case agentUnknown:
			return nil, s.deny(ctx, c.method, c.id, c.serial, "no agent record for this certificate", msgNotAttested)
		}
		if st := s.idx.certStatus(c.id, leaf); st != agentUnrecorded {
			// (The record changed after this server's clock says it
			// signed, or the index does not list the active CA yet.)
			s.log.LogAttrs(ctx, slog.LevelWarn, "agent SVID renewal refused: the datastore is unavailable and the new SVID would not authenticate unrecorded", slog.String(logkey.SPIFFEID, c.id.String()), slog.String(logkey.Serial, c.serial))
			return nil, status.Error(codes.Unavailable, msgUnavailable)
		}
		s.log.LogAttrs(ctx, slog.LevelWarn, "agent SVID renewed while the datastore is unavailable; the agent record will name it once the datastore is back", slog.String(logkey.SPIFFEID, c.id.String()), slog.String(logkey.Serial, serial), slog.String("prev_serial", c.serial), slog.Time(logkey.NotAfter, leaf.NotAfter))
		return &nodev1.RenewAgentResponse{SvidChain: chain}, nil
	case err != nil:
		return nil, s.internal(ctx, c, "update agent", err)
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "agent SVID renewed", slog.String(logkey.SPIFFEID, c.id.String()), slog.String(logkey.Serial, serial), slog.String("prev_serial", c.serial), slog.Time(logkey.NotAfter, leaf.NotAfter))
	return &nodev1.RenewAgentResponse{SvidChain: chain}, nil
}
