package agent

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"writ.dev/writ/agent/nodeclient"
	nodev1 "writ.dev/writ/ca/api/node/v1"
)

// applyTaint applies the server's set of tainted authorities: cached
// JWT-SVIDs signed with a tainted key are dropped, and every X.509-SVID a
// tainted CA signed is signed again now, in the next batches, ahead of
// rotations. The agent SVID, if a tainted CA signed it, is renewed once
// those are done (see signLoop).
func (a *Agent) applyTaint(t *nodev1.TaintedAuthorities) {
	x509IDs, jwtIDs := t.GetX509AuthorityIds(), t.GetJwtKeyIds()
	a.taintGen.Add(1)
	resign := a.cache.Taint(x509IDs, jwtIDs)
	a.sched.enqueue(resign...)
	agentTainted := a.agentSVIDTainted()
	if agentTainted {
		signal(a.sched.wake) // signLoop renews it when idle
	}
	if len(x509IDs) > 0 || len(jwtIDs) > 0 {
		a.log.Info("tainted authorities from the server", "x509_authorities", x509IDs, "jwt_keys", jwtIDs,
			"x509_svids_to_resign", len(resign), "agent_svid_tainted", agentTainted)
	}
}

// agentSVIDTainted reports whether a tainted CA signed the agent SVID and
// it was not itself obtained by renewing for that reason under the same
// tainted set (a server that keeps signing with a tainted CA must not
// make the agent renew in a loop).
func (a *Agent) agentSVIDTainted() bool {
	s := a.svid.Load()
	if s == nil || !a.cache.TaintedAuthority(s.authorityID) {
		return false
	}
	return s != a.taintRenewed.Load() || a.taintGen.Load() != a.taintRenewedGen.Load()
}

// renewTainted renews the agent SVID because a tainted CA signed it, and
// returns errRenewed (or the failure) to end the session.
func (a *Agent) renewTainted(ctx context.Context, c *nodeclient.Client) error {
	a.log.Info("renewing the agent SVID: a tainted CA signed it", "spiffe_id", a.ID().String())
	gen := a.taintGen.Load()
	if err := a.renew(ctx, c); err != nil {
		return err
	}
	s := a.svid.Load()
	if a.cache.TaintedAuthority(s.authorityID) {
		a.taintRenewedGen.Store(gen)
		a.taintRenewed.Store(s)
		a.log.Error("the renewed agent SVID is signed by a tainted CA too; it is renewed again at its rotation time or when the tainted authorities change", "spiffe_id", s.id.String())
	}
	return errRenewed
}

// ackLoop acknowledges to the server each bundle the session applied (the
// latest when several came meanwhile), until ctx ends. A server without
// AckBundle is not asked again in this session.
func (a *Agent) ackLoop(ctx context.Context, c *nodeclient.Client, acks <-chan uint64) {
	for {
		var seq uint64
		select {
		case <-ctx.Done():
			return
		case seq = <-acks:
		}
		err := c.AckBundle(ctx, seq)
		switch {
		case err == nil, ctx.Err() != nil:
		case status.Code(err) == codes.Unimplemented:
			a.log.Debug("the server does not take bundle acknowledgements")
			return
		default:
			// The session's other calls report a lost server.
			a.log.Debug("cannot acknowledge the bundle", "sequence", seq, "error", err)
		}
	}
}
