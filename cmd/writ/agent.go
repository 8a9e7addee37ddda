package main

import (
	"context"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/entry"
)

// agentCommand is `writ agent`. Its admin subcommands come from
// agentAdminCommands; subcommands that run the agent itself are appended
// to Subcommands here.
func agentCommand() *cli.Command {
	subcommands := agentAdminCommands()
	// ---- further agent subcommands (such as `agent run`) go here: ----
	subcommands = append(subcommands, agentRunCommand(), agentHealthcheckCommand())
	return &cli.Command{
		Name:        "agent",
		Usage:       "run or manage agents",
		Action:      groupAction,
		Subcommands: subcommands,
	}
}

// agentAdminCommands are the `writ agent` subcommands that call the
// server's admin API.
func agentAdminCommands() []*cli.Command {
	return []*cli.Command{
		{
			Name:   "list",
			Usage:  "list the attested agents",
			Flags:  withAdminFlags(),
			Action: agentList,
		},
		{
			Name:   "show",
			Usage:  "show one agent",
			Flags:  withAdminFlags(agentIDFlag()),
			Action: agentAction("", (adminv1.AgentServiceClient).GetAgent, func(id string) *adminv1.GetAgentRequest { return &adminv1.GetAgentRequest{SpiffeId: id} }),
		},
		{
			Name:   "evict",
			Usage:  "delete an agent's record: it must attest again, with a new join token",
			Flags:  withAdminFlags(agentIDFlag()),
			Action: agentAction("evicted", (adminv1.AgentServiceClient).EvictAgent, func(id string) *adminv1.EvictAgentRequest { return &adminv1.EvictAgentRequest{SpiffeId: id} }),
		},
		{
			Name:   "ban",
			Usage:  "refuse the agent until it is unbanned",
			Flags:  withAdminFlags(agentIDFlag()),
			Action: agentAction("banned", (adminv1.AgentServiceClient).BanAgent, func(id string) *adminv1.BanAgentRequest { return &adminv1.BanAgentRequest{SpiffeId: id} }),
		},
		{
			Name:   "unban",
			Usage:  "accept a banned agent again",
			Flags:  withAdminFlags(agentIDFlag()),
			Action: agentAction("unbanned", (adminv1.AgentServiceClient).UnbanAgent, func(id string) *adminv1.UnbanAgentRequest { return &adminv1.UnbanAgentRequest{SpiffeId: id} }),
		},
	}
}

func agentIDFlag() cli.Flag {
	return &cli.StringFlag{Name: flagSPIFFEID, Usage: "the agent's SPIFFE `ID` (required)"}
}

// parseAgentID parses the SPIFFE ID of an agent (or of the agent a join
// token is for): canonical, with a path.
func parseAgentID(s string) (spiffeid.ID, error) {
	id, err := entry.ParseID(s)
	if err != nil {
		return spiffeid.ID{}, err
	}
	return entry.ParseIDInDomain(id.TrustDomain(), s)
}

// agentAction returns the action of a command that calls one
// AgentService method on --spiffe-id. It prints the agent (verb == "") or
// "<verb> agent <id>" in text, and the agent in JSON.
func agentAction[Req any](verb string,
	call func(adminv1.AgentServiceClient, context.Context, *Req, ...grpc.CallOption) (*adminv1.Agent, error),
	request func(id string) *Req,
) cli.ActionFunc {
	return func(c *cli.Context) error {
		a, err := newAdminCmd(c)
		if err != nil {
			return err
		}
		if !c.IsSet(flagSPIFFEID) {
			return usagef(c, "missing required flag --%s", flagSPIFFEID)
		}
		id, err := parseAgentID(c.String(flagSPIFFEID))
		if err != nil {
			return err
		}
		client, err := a.dial()
		if err != nil {
			return err
		}
		defer client.Close()
		ctx, cancel := client.callContext(c.Context)
		defer cancel()
		agent, err := call(client.agents, ctx, request(id.String()))
		if err != nil {
			return client.callError(err)
		}
		if a.format == jsonOutput {
			return writeJSON(c.App.Writer, agentToJSON(agent))
		}
		t := newTextWriter(c.App.Writer)
		if verb == "" {
			t.agent(agent)
		} else {
			t.line("%s agent %s", verb, id)
		}
		return t.Flush()
	}
}

func agentList(c *cli.Context) error {
	a, err := newAdminCmd(c)
	if err != nil {
		return err
	}
	resp, err := callAdmin(c.Context, a, func(ctx context.Context, client *adminClient) (*adminv1.ListAgentsResponse, error) {
		return client.agents.ListAgents(ctx, &adminv1.ListAgentsRequest{})
	})
	if err != nil {
		return err
	}
	agents := resp.GetAgents()
	if a.format == jsonOutput {
		out := make([]*jsonAgent, len(agents))
		for i, ag := range agents {
			out[i] = agentToJSON(ag)
		}
		return writeJSON(c.App.Writer, out)
	}
	t := newTextWriter(c.App.Writer)
	t.count(len(agents), "agent", "agents")
	for _, ag := range agents {
		t.line("")
		t.agent(ag)
	}
	return t.Flush()
}
