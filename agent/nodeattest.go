package agent

import (
	"context"
	"errors"
	"writ.dev/writ/ca/entry"
)

// NodeAttestor is the agent half of a node attestation method
// (ca/attest/x509pop, ca/attest/sshpop): it produces the payload the agent
// sends first and answers the server's challenges. An agent configured
// with one attests with it whenever it has no valid agent SVID, and again
// when the server stops recognizing it (evicted, or its SVID expired or
// was lost); a banned agent is refused every time.
type NodeAttestor interface {
	Type() string
	Payload(ctx context.Context) ([]byte, error)
	Respond(ctx context.Context, challenge []byte) ([]byte, error)
}

// joinTokenAttestor is the join_token method: the token is the payload,
// redeemed once with the unary Attest call that every server version
// serves.
type joinTokenAttestor string

func (joinTokenAttestor) Type() string { return "join_token" }

func (j joinTokenAttestor) Payload(context.Context) ([]byte, error) { return []byte(j), nil }

func (joinTokenAttestor) Respond(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("join tokens answer no challenge")
}

// NodeSelectors returns the node selectors the server recorded for the
// agent, as it last said (at attestation, or in the last full Sync
// message), unparsed; nil before either.
func (a *Agent) NodeSelectors() []string {
	if p := a.nodeSelectors.Load(); p != nil {
		return *p
	}
	return nil
}

// setNodeSelectors records the node selectors the server sent and gives
// them to the template entries' node.* fields. A selector the agent cannot
// parse is left out (and logged): it fills no template.
func (a *Agent) setNodeSelectors(sel []string) {
	a.nodeSelectors.Store(&sel)
	parsed := make([]entry.Selector, 0, len(sel))
	for _, s := range sel {
		p, err := entry.ParseSelector(s)
		if err != nil {
			a.log.Warn("node selector from the server not understood; it fills no template", "error", err.Error())
			continue
		}
		parsed = append(parsed, p)
	}
	a.SetNodeSelectors(parsed)
}
