package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/entry"
)

func oauthCommand() *cli.Command {
	clientFlags := func() []cli.Flag {
		return withAdminFlags(
			&cli.StringFlag{Name: "spiffe-id", Usage: "SPIFFE ID of the workload that may get access tokens", Required: true},
			&cli.StringSliceFlag{Name: "audience", Usage: "an `AUDIENCE` it may get tokens for (a name or a URI; repeatable)", Required: true},
			&cli.StringSliceFlag{Name: "scope", Usage: "a `SCOPE` it may get (repeatable)"},
		)
	}
	idFlag := func() []cli.Flag {
		return withAdminFlags(&cli.StringFlag{Name: "spiffe-id", Usage: "SPIFFE ID of the OAuth client", Required: true})
	}
	return &cli.Command{
		Name:  "oauth",
		Usage: "manage which workloads may get OAuth 2.0 access tokens, and revoke tokens",
		Subcommands: []*cli.Command{
			{
				Name:  "client",
				Usage: "manage OAuth clients: the audiences and scopes a SPIFFE ID may get access tokens for (none without a client)",
				Subcommands: []*cli.Command{
					{Name: "create", Usage: "let a SPIFFE ID get access tokens", Flags: clientFlags(), Action: oauthClientPut(false)},
					{Name: "update", Usage: "replace a client's audiences and scopes", Flags: clientFlags(), Action: oauthClientPut(true)},
					{Name: "list", Usage: "list the OAuth clients", Flags: withAdminFlags(), Action: oauthClientList},
					{Name: "show", Usage: "show one OAuth client", Flags: idFlag(), Action: oauthClientOne(false)},
					{Name: "delete", Usage: "delete an OAuth client (tokens it holds stay valid until they expire; revoke them with writ oauth revoke)", Flags: idFlag(), Action: oauthClientOne(true)},
				},
			},
			{
				Name:  "revoke",
				Usage: "revoke one access token (--jti) or every access token issued to a client until now (--client-id)",
				Flags: withAdminFlags(
					&cli.StringFlag{Name: "jti", Usage: "the jti claim of the token to revoke"},
					&cli.StringFlag{Name: "client-id", Usage: "the SPIFFE ID of the client whose tokens to revoke"},
				),
				Action: oauthRevoke,
			},
		},
	}
}

// jsonOAuthClient is a client as --output json prints it.
type jsonOAuthClient struct {
	SPIFFEID  string   `json:"spiffe_id"`
	Audiences []string `json:"audiences"`
	Scopes    []string `json:"scopes"`
	CreatedAt string   `json:"created_at"`
	UpdatedAt string   `json:"updated_at"`
}

func oauthClientToJSON(cl *adminv1.OAuthClient) *jsonOAuthClient {
	j := &jsonOAuthClient{SPIFFEID: cl.GetSpiffeId(), Audiences: cl.GetAudiences(), Scopes: cl.GetScopes(),
		CreatedAt: formatUnix(cl.GetCreatedAt()), UpdatedAt: formatUnix(cl.GetUpdatedAt())}
	if j.Audiences == nil {
		j.Audiences = []string{}
	}
	if j.Scopes == nil {
		j.Scopes = []string{}
	}
	return j
}

func printableList(vs []string) string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = entry.Printable(v)
	}
	return strings.Join(out, " ")
}

func printOAuthClient(c *cli.Context, a *adminCmd, cl *adminv1.OAuthClient) error {
	j := oauthClientToJSON(cl)
	if a.format == jsonOutput {
		return writeJSON(c.App.Writer, j)
	}
	w := tabwriter.NewWriter(c.App.Writer, 0, 0, 1, ' ', 0)
	fmt.Fprintf(w, "SPIFFE ID\t: %s\n", entry.Printable(j.SPIFFEID))
	fmt.Fprintf(w, "Audiences\t: %s\n", printableList(j.Audiences))
	fmt.Fprintf(w, "Scopes\t: %s\n", printableList(j.Scopes))
	fmt.Fprintf(w, "Created at\t: %s\n", j.CreatedAt)
	fmt.Fprintf(w, "Updated at\t: %s\n", j.UpdatedAt)
	return w.Flush()
}

func oauthClientPut(update bool) cli.ActionFunc {
	return func(c *cli.Context) error {
		a, err := newAdminCmd(c)
		if err != nil {
			return err
		}
		req := &adminv1.OAuthClient{SpiffeId: c.String("spiffe-id"), Audiences: c.StringSlice("audience"), Scopes: c.StringSlice("scope")}
		resp, err := callAdmin(c.Context, a, func(ctx context.Context, client *adminClient) (*adminv1.OAuthClient, error) {
			if update {
				return client.oauth.UpdateOAuthClient(ctx, req)
			}
			return client.oauth.CreateOAuthClient(ctx, req)
		})
		if err != nil {
			return err
		}
		return printOAuthClient(c, a, resp)
	}
}

func oauthClientOne(del bool) cli.ActionFunc {
	return func(c *cli.Context) error {
		a, err := newAdminCmd(c)
		if err != nil {
			return err
		}
		req := &adminv1.GetOAuthClientRequest{SpiffeId: c.String("spiffe-id")}
		resp, err := callAdmin(c.Context, a, func(ctx context.Context, client *adminClient) (*adminv1.OAuthClient, error) {
			if del {
				return client.oauth.DeleteOAuthClient(ctx, req)
			}
			return client.oauth.GetOAuthClient(ctx, req)
		})
		if err != nil {
			return err
		}
		if del && a.format != jsonOutput {
			fmt.Fprintf(c.App.Writer, "OAuth client %s deleted\n", entry.Printable(resp.GetSpiffeId()))
			return nil
		}
		return printOAuthClient(c, a, resp)
	}
}

func oauthClientList(c *cli.Context) error {
	a, err := newAdminCmd(c)
	if err != nil {
		return err
	}
	resp, err := callAdmin(c.Context, a, func(ctx context.Context, client *adminClient) (*adminv1.ListOAuthClientsResponse, error) {
		return client.oauth.ListOAuthClients(ctx, &adminv1.ListOAuthClientsRequest{})
	})
	if err != nil {
		return err
	}
	out := []*jsonOAuthClient{}
	for _, cl := range resp.GetClients() {
		out = append(out, oauthClientToJSON(cl))
	}
	if a.format == jsonOutput {
		return writeJSON(c.App.Writer, out)
	}
	w := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "SPIFFE ID\tAUDIENCES\tSCOPES")
	for _, j := range out {
		fmt.Fprintf(w, "%s\t%s\t%s\n", entry.Printable(j.SPIFFEID), printableList(j.Audiences), printableList(j.Scopes))
	}
	return w.Flush()
}

func oauthRevoke(c *cli.Context) error {
	a, err := newAdminCmd(c)
	if err != nil {
		return err
	}
	req := &adminv1.RevokeOAuthTokensRequest{Jti: c.String("jti"), ClientId: c.String("client-id")}
	if (req.Jti == "") == (req.ClientId == "") {
		return usagef(c, "give exactly one of --jti and --client-id")
	}
	resp, err := callAdmin(c.Context, a, func(ctx context.Context, client *adminClient) (*adminv1.OAuthRevocation, error) {
		return client.oauth.RevokeOAuthTokens(ctx, req)
	})
	if err != nil {
		return err
	}
	if a.format == jsonOutput {
		return writeJSON(c.App.Writer, map[string]any{"jti": resp.GetJti(), "client_id": resp.GetClientId(),
			"revoked_at": formatUnix(resp.GetRevokedAt()), "expires_at": formatUnix(resp.GetExpiresAt())})
	}
	what := "access token " + entry.Printable(resp.GetJti())
	if resp.GetClientId() != "" {
		what = "every access token issued to " + entry.Printable(resp.GetClientId()) + " until now"
	}
	fmt.Fprintf(c.App.Writer, "revoked %s (the revocation is kept until %s)\n", what, formatUnix(resp.GetExpiresAt()))
	return nil
}
