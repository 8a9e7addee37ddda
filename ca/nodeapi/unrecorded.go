package nodeapi

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/logkey"
)

// An agent SVID renewed while the datastore cannot be written is not
// named by the agent's record: the record still names the certificate
// the agent renewed from. Such a certificate authenticates its agent
// ("unrecorded") when all of these hold, judged from the last agent
// record the server read:
//
//   - it verifies against the bundle (as every agent SVID must);
//   - it is an agent SVID (it carries x509ca.OIDAgentSVID, which only
//     the signing of agent SVIDs sets) for an agent ID (under
//     /writ/agent/): a workload SVID never passes, and neither does any
//     certificate for a legacy agent ID outside /writ/agent/, which a
//     workload entry may share;
//   - a Writ server CA signed it directly (one of the X.509 CA keys the
//     datastore lists, not tainted): a downstream CA, which may sign
//     names under the trust domain, never passes;
//   - it was signed after the record last changed (NotBefore plus
//     x509ca.Backdate is later than the record's UpdatedAt), so a
//     certificate older than the one the record names, or from before a
//     re-attestation or an unban, never passes;
//   - the record exists and is not banned.
//
// All of this holds only while the server's last successful read of the
// datastore is at most one agent SVID TTL (Config.DefaultX509SVIDTTL)
// old; beyond that such a certificate, and RenewAgent while the
// datastore is unavailable, are refused as Unavailable. A ban made
// meanwhile at a server that can write it thus applies everywhere within
// about two agent SVID lifetimes of the last read.
//
// With the datastore up, a server that meets such a certificate records
// it as the agent's current one (the record's current serial becomes the
// previous), at the agent's first call; every server of the deployment
// does so, so neither the server that signed it nor its data directory
// needs to survive the outage. A normal renewal records the new serial
// before returning it, so outside an outage no such certificate exists.

// errAgentRecorded: the agent record already names the certificate.
var errAgentRecorded = errors.New("agent record already names the certificate")

// issuedAt is when the server that signed leaf did so, as far as leaf
// tells: its NotBefore plus the backdate every Writ SVID carries.
func issuedAt(leaf *x509.Certificate) time.Time { return leaf.NotBefore.Add(x509ca.Backdate) }

// issuedAfter reports whether leaf was signed after the agent record a
// last changed.
func issuedAfter(leaf *x509.Certificate, a *datastore.Agent) bool {
	return issuedAt(leaf).After(a.UpdatedAt)
}

// mayBeUnrecorded reports whether leaf, a certificate for id that a's
// record does not name, may still be one of the agent's own, renewed
// while the datastore was unavailable: an agent SVID for an agent ID,
// signed after the record last changed. Who signed it is checked apart
// (bundleState.issuer).
func mayBeUnrecorded(id spiffeid.ID, leaf *x509.Certificate, a *datastore.Agent) bool {
	return entry.IsAgentID(id) && x509ca.IsAgentSVID(leaf) && issuedAfter(leaf, a)
}

// serverCAs returns the certificates of the X.509 CA keys listed in keys
// that may sign agent SVIDs: every server's, tainted ones left out (cas),
// and with them (all).
func (ix *index) serverCAs(keys []*datastore.CAKey) (cas, all []*x509.Certificate) {
	for _, k := range keys {
		if k.Kind != datastore.CAKeyX509 || len(k.CertDER) == 0 {
			continue
		}
		certs, err := x509.ParseCertificates(k.CertDER)
		if err != nil {
			ix.log.Warn("CA key record is corrupt; agent SVIDs it signed do not authenticate", logkey.KeyID, k.ID, logkey.Error, err.Error())
			continue
		}
		all = append(all, certs[0])
		if k.State != datastore.CAKeyTainted {
			cas = append(cas, certs[0])
		}
	}
	return cas, all
}

// issuedBy says which server CAs of a bundleState signed a certificate.
type issuedBy uint8

const (
	// issuedByServer: one of agentIssuers (tainted or not).
	issuedByServer issuedBy = 1 << iota
	// issuedByActiveServer: one of serverCAs (not tainted).
	issuedByActiveServer
)

// issuerCache remembers issuedBy per leaf for one bundleState, as
// peerCache remembers verified chains: a connection presents the same
// parsed leaf on every call, so its calls after the first check no
// signature.
type issuerCache struct {
	mu sync.Mutex // guards m
	m  map[*x509.Certificate]issuedBy
}

// issuer returns which of b's server CAs signed leaf directly.
func (b *bundleState) issuer(leaf *x509.Certificate) issuedBy {
	c := &b.issuers
	c.mu.Lock()
	by, ok := c.m[leaf]
	c.mu.Unlock()
	if ok {
		return by
	}
	for _, ca := range b.agentIssuers {
		if bytes.Equal(leaf.RawIssuer, ca.RawSubject) && leaf.CheckSignatureFrom(ca) == nil {
			by = issuedByServer
			if slices.Contains(b.serverCAs, ca) {
				by |= issuedByActiveServer
			}
			break
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxVerifiedPeers {
		c.m = make(map[*x509.Certificate]issuedBy)
	}
	c.m[leaf] = by
	return by
}

// certStatusLocked is what the index says of an agent certificate (see
// agentStatus). ix.mu must be held.
func (ix *index) certStatusLocked(id spiffeid.ID, leaf *x509.Certificate) agentStatus {
	a := ix.agents[id]
	serial := leaf.SerialNumber.String()
	switch {
	case a == nil:
		return agentUnknown
	case a.SerialNumber == serial || a.PrevSerialNumber == serial:
		// A downstream CA may sign names of the trust domain, and
		// serials are no secret: the serial authenticates only a
		// certificate a server CA signed (a tainted one too, so that
		// agents can renew away from it).
		if b := ix.bundle.Load(); b == nil || b.issuer(leaf)&issuedByServer == 0 {
			return agentUnknown
		}
		if a.Banned {
			return agentBanned
		}
		return agentOK
	case !mayBeUnrecorded(id, leaf, a):
		return agentUnknown
	case a.Banned:
		return agentBanned
	}
	if b := ix.bundle.Load(); b == nil || b.issuer(leaf)&issuedByActiveServer == 0 {
		return agentUnknown
	}
	if !ix.readRecently() {
		return agentStale
	}
	return agentUnrecorded
}

// readRecently reports whether the index brought itself up to date with
// the datastore within the last readBound: only then does it judge
// unrecorded agent SVIDs, or let RenewAgent sign unrecorded ones, from
// its agent records. A server cut off from the datastore longer would
// otherwise keep renewing an agent banned meanwhile at another server.
func (ix *index) readRecently() bool {
	last := ix.lastRead.Load()
	return last != 0 && ix.clock.Now().Sub(time.Unix(0, last)) <= ix.readBound
}

// certStatus is certStatusLocked taking the lock.
func (ix *index) certStatus(id spiffeid.ID, leaf *x509.Certificate) agentStatus {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	return ix.certStatusLocked(id, leaf)
}

// recordRenewal makes the agent record name leaf, an unrecorded
// certificate, as the agent's current one. It returns agentOK once the
// record names it, agentUnrecorded if the datastore is unavailable, and
// agentBanned or agentUnknown if the record, read afresh, refuses it.
func (s *Service) recordRenewal(ctx context.Context, id spiffeid.ID, leaf *x509.Certificate) (agentStatus, error) {
	serial := leaf.SerialNumber.String()
	var prev string
	_, err := s.store.UpdateAgent(ctx, id, func(a *datastore.Agent) error {
		switch {
		case a.Banned:
			return errAgentBanned
		case a.SerialNumber == serial || a.PrevSerialNumber == serial:
			return errAgentRecorded
		case !mayBeUnrecorded(id, leaf, a):
			return errAgentChanged
		}
		prev = a.SerialNumber
		a.PrevSerialNumber = a.SerialNumber
		a.SerialNumber = serial
		a.CertNotAfter = leaf.NotAfter
		a.UpdatedAt = issuedAt(leaf)
		return nil
	})
	switch {
	case err == nil:
		s.log.LogAttrs(ctx, slog.LevelInfo, "agent record names an SVID renewed while the datastore was unavailable", slog.String(logkey.SPIFFEID, id.String()), slog.String(logkey.Serial, serial), slog.String("prev_serial", prev), slog.Time(logkey.NotAfter, leaf.NotAfter))
		return agentOK, nil
	case errors.Is(err, errAgentRecorded):
		return agentOK, nil
	case errors.Is(err, errAgentBanned):
		return agentBanned, nil
	case errors.Is(err, errAgentChanged), errors.Is(err, datastore.ErrNotFound):
		return agentUnknown, nil
	case errors.Is(err, datastore.ErrUnavailable):
		return agentUnrecorded, nil
	}
	return agentUnknown, fmt.Errorf("record renewed agent SVID: %w", err)
}
