package main

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/urfave/cli/v2"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/entry"
)

func federationCommand() *cli.Command {
	relFlags := func() []cli.Flag {
		return withAdminFlags(
			&cli.StringFlag{Name: "trust-domain", Usage: "the federated trust domain, e.g. partner.example", Required: true},
			&cli.StringFlag{Name: "bundle-endpoint-url", Usage: "https URL of the trust domain's SPIFFE bundle endpoint", Required: true},
			&cli.StringFlag{Name: "profile", Usage: "how the endpoint authenticates: https_spiffe (an X.509-SVID, see --endpoint-spiffe-id) or https_web (Web PKI)", Required: true},
			&cli.StringFlag{Name: "endpoint-spiffe-id", Usage: "SPIFFE ID of the https_spiffe endpoint (default: spiffe://<trust domain>/writ/server)"},
			&cli.StringFlag{Name: "trust-bundle", Usage: "`FILE` holding a bundle of the trust domain (SPIFFE or PEM) to authenticate an https_spiffe endpoint the first time", TakesFile: true},
			&cli.StringFlag{Name: flagFormat, Usage: "`FORMAT` of --trust-bundle: spiffe or pem (default: detected)"},
		)
	}
	tdFlag := func() []cli.Flag {
		return withAdminFlags(&cli.StringFlag{Name: "trust-domain", Usage: "the federated trust domain", Required: true})
	}
	return &cli.Command{
		Name:  "federation",
		Usage: "manage federation relationships: trust domains whose bundles the servers fetch",
		Subcommands: []*cli.Command{
			{Name: "create", Usage: "create a federation relationship", Flags: relFlags(), Action: federationPut(false)},
			{Name: "update", Usage: "change a federation relationship's endpoint", Flags: relFlags(), Action: federationPut(true)},
			{Name: "list", Usage: "list the federation relationships", Flags: withAdminFlags(), Action: federationList},
			{Name: "show", Usage: "show one federation relationship and this server's last fetch", Flags: tdFlag(), Action: federationOne("show")},
			{Name: "delete", Usage: "delete a federation relationship (the trust domain's bundle stays; writ bundle delete removes it)", Flags: tdFlag(), Action: federationOne("delete")},
			{Name: "refresh", Usage: "fetch the trust domain's bundle now", Flags: tdFlag(), Action: federationOne("refresh")},
		},
	}
}

// jsonFederation is a relationship as --output json prints it.
type jsonFederation struct {
	TrustDomain       string                `json:"trust_domain"`
	BundleEndpointURL string                `json:"bundle_endpoint_url"`
	Profile           string                `json:"profile"`
	EndpointSPIFFEID  string                `json:"endpoint_spiffe_id,omitempty"`
	CreatedAt         string                `json:"created_at"`
	UpdatedAt         string                `json:"updated_at"`
	Status            *jsonFederationStatus `json:"status,omitempty"`
}

type jsonFederationStatus struct {
	LastAttempt    string `json:"last_attempt,omitempty"`
	LastSuccess    string `json:"last_success,omitempty"`
	LastError      string `json:"last_error,omitempty"`
	BundleSequence uint64 `json:"bundle_sequence"`
	NextFetch      string `json:"next_fetch,omitempty"`
}

func federationToJSON(f *adminv1.Federation) *jsonFederation {
	ts := func(s int64) string {
		if s == 0 {
			return ""
		}
		return formatUnix(s)
	}
	j := &jsonFederation{TrustDomain: f.GetTrustDomain(), BundleEndpointURL: f.GetBundleEndpointUrl(), Profile: f.GetProfile(),
		EndpointSPIFFEID: f.GetEndpointSpiffeId(), CreatedAt: ts(f.GetCreatedAt()), UpdatedAt: ts(f.GetUpdatedAt())}
	if st := f.GetStatus(); st != nil {
		j.Status = &jsonFederationStatus{LastAttempt: ts(st.GetLastAttempt()), LastSuccess: ts(st.GetLastSuccess()), LastError: st.GetLastError(),
			BundleSequence: st.GetBundleSequence(), NextFetch: ts(st.GetNextFetch())}
	}
	return j
}

func printFederation(c *cli.Context, a *adminCmd, f *adminv1.Federation) error {
	j := federationToJSON(f)
	if a.format == jsonOutput {
		return writeJSON(c.App.Writer, j)
	}
	w := tabwriter.NewWriter(c.App.Writer, 0, 0, 1, ' ', 0)
	fmt.Fprintf(w, "Trust domain\t: %s\n", entry.Printable(j.TrustDomain))
	fmt.Fprintf(w, "Bundle endpoint URL\t: %s\n", entry.Printable(j.BundleEndpointURL))
	fmt.Fprintf(w, "Profile\t: %s\n", entry.Printable(j.Profile))
	if j.EndpointSPIFFEID != "" {
		fmt.Fprintf(w, "Endpoint SPIFFE ID\t: %s\n", entry.Printable(j.EndpointSPIFFEID))
	}
	if st := j.Status; st != nil {
		fmt.Fprintf(w, "Last fetch\t: %s\n", st.LastAttempt)
		fmt.Fprintf(w, "Last success\t: %s\n", st.LastSuccess)
		if st.LastError != "" {
			fmt.Fprintf(w, "Last error\t: %s\n", entry.Printable(st.LastError))
		}
		fmt.Fprintf(w, "Bundle sequence\t: %d\n", st.BundleSequence)
		fmt.Fprintf(w, "Next fetch\t: %s\n", st.NextFetch)
	}
	return w.Flush()
}

func federationPut(update bool) cli.ActionFunc {
	return func(c *cli.Context) error {
		a, err := newAdminCmd(c)
		if err != nil {
			return err
		}
		name := c.String("trust-domain")
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil || td.Name() != name {
			return usagef(c, "--trust-domain %q is not a valid trust domain name", name)
		}
		req := &adminv1.Federation{TrustDomain: name, BundleEndpointUrl: c.String("bundle-endpoint-url"), Profile: c.String("profile"), EndpointSpiffeId: c.String("endpoint-spiffe-id")}
		switch req.Profile {
		case "https_spiffe":
			if req.EndpointSpiffeId == "" {
				req.EndpointSpiffeId = "spiffe://" + name + "/writ/server"
			}
		case "https_web":
			if req.EndpointSpiffeId != "" {
				return usagef(c, "--endpoint-spiffe-id is for the https_spiffe profile")
			}
		default:
			return usagef(c, "--profile %q: want https_spiffe or https_web", req.Profile)
		}
		if path := c.String("trust-bundle"); path != "" {
			if req.TrustBundle, err = readBundleFile(c, td, path, c.String(flagFormat)); err != nil {
				return err
			}
		}
		resp, err := callAdmin(c.Context, a, func(ctx context.Context, client *adminClient) (*adminv1.Federation, error) {
			if update {
				return client.federations.UpdateFederation(ctx, req)
			}
			return client.federations.CreateFederation(ctx, req)
		})
		if err != nil {
			return err
		}
		return printFederation(c, a, resp)
	}
}

func federationOne(op string) cli.ActionFunc {
	return func(c *cli.Context) error {
		a, err := newAdminCmd(c)
		if err != nil {
			return err
		}
		req := &adminv1.GetFederationRequest{TrustDomain: c.String("trust-domain")}
		resp, err := callAdmin(c.Context, a, func(ctx context.Context, client *adminClient) (*adminv1.Federation, error) {
			switch op {
			case "delete":
				return client.federations.DeleteFederation(ctx, req)
			case "refresh":
				return client.federations.RefreshFederation(ctx, req)
			default:
				return client.federations.GetFederation(ctx, req)
			}
		})
		if err != nil {
			return err
		}
		if op == "delete" && a.format != jsonOutput {
			fmt.Fprintf(c.App.Writer, "federation relationship with %s deleted\n", entry.Printable(resp.GetTrustDomain()))
			return nil
		}
		return printFederation(c, a, resp)
	}
}

func federationList(c *cli.Context) error {
	a, err := newAdminCmd(c)
	if err != nil {
		return err
	}
	resp, err := callAdmin(c.Context, a, func(ctx context.Context, client *adminClient) (*adminv1.ListFederationsResponse, error) {
		return client.federations.ListFederations(ctx, &adminv1.ListFederationsRequest{})
	})
	if err != nil {
		return err
	}
	out := []*jsonFederation{}
	for _, f := range resp.GetFederations() {
		out = append(out, federationToJSON(f))
	}
	if a.format == jsonOutput {
		return writeJSON(c.App.Writer, out)
	}
	w := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "TRUST DOMAIN\tPROFILE\tBUNDLE ENDPOINT\tLAST SUCCESS\tLAST ERROR")
	for _, f := range out {
		last, lastErr := "", ""
		if f.Status != nil {
			last, lastErr = f.Status.LastSuccess, f.Status.LastError
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", entry.Printable(f.TrustDomain), entry.Printable(f.Profile), entry.Printable(f.BundleEndpointURL), last, entry.Printable(lastErr))
	}
	return w.Flush()
}
