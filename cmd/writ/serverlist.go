package main

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/entry"
)

func serverListCommand() *cli.Command {
	return &cli.Command{
		Name:   "list",
		Usage:  "list the servers that share the datastore, with their last heartbeat",
		Flags:  withAdminFlags(),
		Action: serverList,
	}
}

// jsonServer is a server as --output json prints it.
type jsonServer struct {
	ID        string `json:"id"`
	Address   string `json:"address"`
	Version   string `json:"version"`
	StartedAt string `json:"started_at"` // RFC 3339, "" if unknown
	Heartbeat string `json:"heartbeat"`  // RFC 3339, "" if unknown
}

func serverToJSON(s *adminv1.Server) *jsonServer {
	rfc3339 := func(secs int64) string {
		if secs == 0 {
			return ""
		}
		return formatUnix(secs)
	}
	return &jsonServer{
		ID:        s.GetId(),
		Address:   s.GetAddress(),
		Version:   s.GetVersion(),
		StartedAt: rfc3339(s.GetStartedAt()),
		Heartbeat: rfc3339(s.GetHeartbeat()),
	}
}

func serverList(c *cli.Context) error {
	a, err := newAdminCmd(c)
	if err != nil {
		return err
	}
	resp, err := callAdmin(c.Context, a, func(ctx context.Context, client *adminClient) (*adminv1.ListServersResponse, error) {
		return client.servers.ListServers(ctx, &adminv1.ListServersRequest{})
	})
	if err != nil {
		return err
	}
	servers := resp.GetServers()
	if a.format == jsonOutput {
		out := make([]*jsonServer, len(servers))
		for i, s := range servers {
			out[i] = serverToJSON(s)
		}
		return writeJSON(c.App.Writer, out)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tADDRESS\tVERSION\tSTARTED AT\tHEARTBEAT")
	for _, s := range servers {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", entry.Printable(s.GetId()), entry.Printable(s.GetAddress()),
			entry.Printable(s.GetVersion()), formatUnix(s.GetStartedAt()), formatUnix(s.GetHeartbeat()))
	}
	return tw.Flush()
}
