package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/urfave/cli/v2"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
)

const flagFormat = "format"

func bundleCommand() *cli.Command {
	return &cli.Command{
		Name:   "bundle",
		Usage:  "show the trust bundle; set, list and delete federated bundles",
		Action: groupAction,
		Subcommands: []*cli.Command{
			{
				Name:  "show",
				Usage: "print the local trust domain's bundle, or a federated one with --trust-domain",
				Description: "--format pem prints the X.509 authorities as PEM certificates; --format spiffe\n" +
					"prints the SPIFFE bundle (a JWKS). --output json is the same as --format spiffe.",
				Flags: withAdminFlags(
					&cli.StringFlag{Name: flagFormat, Value: "pem", Usage: "`FORMAT` of the output: pem or spiffe"},
					&cli.StringFlag{Name: "trust-domain", Usage: "a federated trust domain whose bundle to print (default: the local one)"},
				),
				Action: bundleShow,
			},
			{
				Name:  "set",
				Usage: "set the bundle of another trust domain (a static federated bundle)",
				Description: "--file holds the bundle in SPIFFE format (a JWKS, as bundle show --format spiffe prints)\n" +
					"or as PEM certificates (X.509 authorities only); --format says which, else it is detected.",
				Flags: withAdminFlags(
					&cli.StringFlag{Name: "trust-domain", Usage: "the federated trust domain, e.g. partner.example", Required: true},
					&cli.StringFlag{Name: "file", Usage: "`FILE` holding the bundle, or - for standard input", Required: true, TakesFile: true},
					&cli.StringFlag{Name: flagFormat, Usage: "`FORMAT` of the file: spiffe or pem (default: detected)"},
				),
				Action: bundleSet,
			},
			{
				Name:   "list",
				Usage:  "list the federated bundles",
				Flags:  withAdminFlags(),
				Action: bundleList,
			},
			{
				Name:   "delete",
				Usage:  "delete the bundle of a federated trust domain",
				Flags:  withAdminFlags(&cli.StringFlag{Name: "trust-domain", Usage: "the federated trust domain", Required: true}),
				Action: bundleDelete,
			},
		},
	}
}

func bundleShow(c *cli.Context) error {
	a, err := newAdminCmd(c)
	if err != nil {
		return err
	}
	format := c.String(flagFormat)
	switch format {
	case "pem", "spiffe":
	default:
		return usagef(c, "unknown --%s %q: want pem or spiffe", flagFormat, format)
	}
	if a.format == jsonOutput {
		if c.IsSet(flagFormat) && format == "pem" {
			return usagef(c, "--%s pem cannot be printed as JSON: use --%s spiffe", flagFormat, flagFormat)
		}
		format = "spiffe"
	}

	resp, err := callAdmin(c.Context, a, func(ctx context.Context, client *adminClient) (*adminv1.GetBundleResponse, error) {
		return client.bundles.GetBundle(ctx, &adminv1.GetBundleRequest{TrustDomain: c.String("trust-domain")})
	})
	if err != nil {
		return err
	}
	td, err := spiffeid.TrustDomainFromString(resp.GetTrustDomain())
	if err != nil {
		return fmt.Errorf("the server sent an invalid trust domain: %w", err)
	}
	b, err := spiffebundle.Parse(td, resp.GetSpiffeBundle())
	if err != nil {
		return fmt.Errorf("the server sent an invalid bundle: %w", err)
	}

	w := c.App.Writer
	if format == "spiffe" {
		var buf bytes.Buffer
		if err := json.Indent(&buf, resp.GetSpiffeBundle(), "", "  "); err != nil {
			return fmt.Errorf("the server sent an invalid bundle: %w", err)
		}
		buf.WriteByte('\n')
		_, err := w.Write(escapeJSONControls(buf.Bytes()))
		return err
	}
	authorities := b.X509Authorities()
	if len(authorities) == 0 {
		return fmt.Errorf("the bundle of %s has no X.509 authorities", td.Name())
	}
	var buf bytes.Buffer
	for _, cert := range authorities {
		if err := pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}); err != nil {
			return err
		}
	}
	_, err = w.Write(buf.Bytes())
	return err
}
