package main

import (
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/urfave/cli/v2"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/entry"
)

const flagTTL = "ttl"

func tokenCommand() *cli.Command {
	return &cli.Command{
		Name:   "token",
		Usage:  "manage join tokens",
		Action: groupAction,
		Subcommands: []*cli.Command{
			{
				Name:  "generate",
				Usage: "generate a one-time join token for an agent",
				Description: "Prints the token alone on a line, so that TOKEN=$(writ token generate ...)\n" +
					"works. The agent that redeems it is given exactly --spiffe-id, which must be under\n" +
					"spiffe://<trust domain>/writ/agent/ (the path Writ reserves for agents).",
				Flags: withAdminFlags(
					&cli.StringFlag{Name: flagSPIFFEID, Usage: "the SPIFFE `ID` the agent will have, under /writ/agent/ (required)"},
					&cli.StringFlag{Name: flagTTL, Usage: "time until the token expires (a `TTL`), such as 10m or 600 (seconds)", DefaultText: "the server's default"},
				),
				Action: tokenGenerate,
			},
		},
	}
}

// jsonToken is a generated join token as --output json prints it.
type jsonToken struct {
	Token     string `json:"token"`
	SPIFFEID  string `json:"spiffe_id"`
	ExpiresAt string `json:"expires_at"` // RFC 3339, UTC
}

func tokenGenerate(c *cli.Context) error {
	a, err := newAdminCmd(c)
	if err != nil {
		return err
	}
	if !c.IsSet(flagSPIFFEID) {
		return usagef(c, "missing required flag --%s", flagSPIFFEID)
	}
	id, err := parseNewAgentID(c.String(flagSPIFFEID))
	if err != nil {
		return err
	}
	var ttl time.Duration
	if c.IsSet(flagTTL) {
		if ttl, err = entry.ParseTTL(c.String(flagTTL)); err != nil {
			return err
		}
	}

	client, err := a.dial()
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := client.callContext(c.Context)
	defer cancel()
	resp, err := client.tokens.GenerateJoinToken(ctx, &adminv1.GenerateJoinTokenRequest{
		SpiffeId: id.String(),
		Ttl:      int64(ttl / time.Second),
	})
	if err != nil {
		return client.callError(err)
	}
	if a.format == jsonOutput {
		return writeJSON(c.App.Writer, &jsonToken{
			Token:     resp.GetToken(),
			SPIFFEID:  resp.GetSpiffeId(),
			ExpiresAt: time.Unix(resp.GetExpiresAt(), 0).UTC().Format(time.RFC3339),
		})
	}
	t := newTextWriter(c.App.Writer)
	t.line("%s", entry.Printable(resp.GetToken()))
	return t.Flush()
}

// parseNewAgentID parses the SPIFFE ID of the agent a join token is for:
// canonical, under /writ/agent/ of its trust domain.
func parseNewAgentID(s string) (spiffeid.ID, error) {
	id, err := entry.ParseID(s)
	if err != nil {
		return spiffeid.ID{}, err
	}
	return entry.ParseAgentID(id.TrustDomain(), s)
}
