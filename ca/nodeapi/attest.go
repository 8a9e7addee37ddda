package nodeapi

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/attest/jointoken"
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

// Attest redeems a join token for an agent SVID. The CSR is checked before
// the token is consumed, so a bad CSR does not use the token up; a token
// for a banned agent is consumed all the same.
func (h *handler) Attest(ctx context.Context, req *nodev1.AttestRequest) (*nodev1.AttestResponse, error) {
	s := h.s
	c, err := s.callerFrom(ctx, false)
	if err != nil {
		return nil, err
	}
	pub, err := x509ca.CheckCSR(req.GetCsr())
	if err != nil {
		return nil, invalidArg("invalid CSR", err)
	}
	// Refuse before consuming the token if the server could not finish.
	b := s.idx.bundle.Load()
	if a := s.km.Active(); a == nil || a.X509 == nil || b == nil || b.json == nil {
		return nil, status.Error(codes.Unavailable, msgNoCA)
	}

	token := req.GetJoinToken()
	if token == "" || len(token) > maxJoinTokenLength {
		s.refuseAttest(ctx, "malformed join token")
		return nil, status.Error(codes.PermissionDenied, msgBadToken)
	}
	now := s.clock.Now()
	jt, err := s.store.ConsumeJoinToken(ctx, jointoken.Hash(token), now)
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		s.refuseAttest(ctx, "unknown or already used join token")
		return nil, status.Error(codes.PermissionDenied, msgBadToken)
	case errors.Is(err, datastore.ErrExpired):
		s.refuseAttest(ctx, "expired join token")
		return nil, status.Error(codes.PermissionDenied, msgBadToken)
	case err != nil:
		return nil, s.internal(ctx, c, "consume join token", err)
	}
	s.metrics.JoinToken(metrics.TokenConsumed)
	id := jt.SPIFFEID
	if err := s.checkAgentID(id); err != nil {
		s.log.LogAttrs(ctx, slog.LevelError, "join token names an invalid agent ID; no identity issued", peerAddr(ctx), slog.String(logkey.Reason, err.Error()))
		return nil, status.Error(codes.PermissionDenied, msgNoIdentity)
	}

	chain, leaf, err := s.signAgentSVID(now, id, pub)
	if err != nil {
		return nil, s.internal(ctx, c, "sign agent SVID", err)
	}
	serial := leaf.SerialNumber.String()
	if err := s.putAttestedAgent(ctx, id, serial, leaf.NotAfter, now); err != nil {
		if errors.Is(err, errAgentBanned) {
			s.log.LogAttrs(ctx, slog.LevelWarn, "attestation refused", peerAddr(ctx), slog.String(logkey.SPIFFEID, id.String()), slog.String(logkey.Reason, "agent is banned; its join token is used up"))
			return nil, status.Error(codes.PermissionDenied, msgBanned)
		}
		return nil, s.internal(ctx, c, "store agent", err)
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "agent attested", peerAddr(ctx), slog.String(logkey.SPIFFEID, id.String()), slog.String(logkey.Serial, serial), slog.Time(logkey.NotAfter, leaf.NotAfter))
	return &nodev1.AttestResponse{SvidChain: chain, Bundle: b.json}, nil
}

func (s *Service) refuseAttest(ctx context.Context, reason string) {
	s.metrics.JoinToken(metrics.TokenRefused)
	s.log.LogAttrs(ctx, slog.LevelWarn, "attestation refused", peerAddr(ctx), slog.String(logkey.Reason, reason))
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
// is banned. A replaced record keeps its CreatedAt and no longer names any
// earlier certificate.
func (s *Service) putAttestedAgent(ctx context.Context, id spiffeid.ID, serial string, notAfter, now time.Time) error {
	for range 3 {
		_, err := s.store.UpdateAgent(ctx, id, func(a *datastore.Agent) error {
			if a.Banned {
				return errAgentBanned
			}
			*a = datastore.Agent{
				SPIFFEID:        id,
				AttestationType: AttestationTypeJoinToken,
				SerialNumber:    serial,
				CertNotAfter:    notAfter,
				CreatedAt:       a.CreatedAt,
				UpdatedAt:       now,
			}
			return nil
		})
		if !errors.Is(err, datastore.ErrNotFound) {
			return err
		}
		err = s.store.CreateAgent(ctx, &datastore.Agent{
			SPIFFEID:        id,
			AttestationType: AttestationTypeJoinToken,
			SerialNumber:    serial,
			CertNotAfter:    notAfter,
			CreatedAt:       now,
			UpdatedAt:       now,
		})
		if !errors.Is(err, datastore.ErrAlreadyExists) {
			return err
		}
		// Created meanwhile by another attestation: update that.
	}
	return errors.New("agent record keeps changing")
}

// signAgentSVID signs an agent X.509-SVID for id and returns its chain
// (leaf first, no root) and the parsed leaf.
func (s *Service) signAgentSVID(now time.Time, id spiffeid.ID, pub crypto.PublicKey) ([][]byte, *x509.Certificate, error) {
	a := s.km.Active()
	if a == nil || a.X509 == nil {
		return nil, nil, errors.New("no active X.509 CA")
	}
	began := s.clock.Now()
	der, err := x509ca.SignX509SVID(now, a.X509, x509ca.SVIDParams{ID: id, TTL: s.x509TTL, PublicKey: pub})
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
		case a.SerialNumber != c.serial && a.PrevSerialNumber != c.serial:
			return errAgentChanged
		}
		a.PrevSerialNumber = c.serial
		a.SerialNumber = serial
		a.CertNotAfter = leaf.NotAfter
		a.UpdatedAt = now
		return nil
	})
	switch {
	case errors.Is(err, errAgentBanned):
		return nil, s.deny(ctx, c.method, c.id, c.serial, "agent was banned", msgBanned)
	case errors.Is(err, errAgentChanged):
		return nil, s.deny(ctx, c.method, c.id, c.serial, "agent record names other certificates", msgNotAttested)
	case errors.Is(err, datastore.ErrNotFound):
		return nil, s.deny(ctx, c.method, c.id, c.serial, "agent was evicted", msgNotAttested)
	case err != nil:
		return nil, s.internal(ctx, c, "update agent", err)
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "agent SVID renewed", slog.String(logkey.SPIFFEID, c.id.String()), slog.String(logkey.Serial, serial), slog.String("prev_serial", c.serial), slog.Time(logkey.NotAfter, leaf.NotAfter))
	return &nodev1.RenewAgentResponse{SvidChain: chain}, nil
}
