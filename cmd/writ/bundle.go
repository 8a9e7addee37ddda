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
		Usage:  "show the trust bundle",
		Action: groupAction,
		Subcommands: []*cli.Command{
			{
				Name:  "show",
				Usage: "print the local trust domain's bundle",
				Description: "--format pem prints the X.509 authorities as PEM certificates; --format spiffe\n" +
					"prints the SPIFFE bundle (a JWKS). --output json is the same as --format spiffe.",
				Flags: withAdminFlags(
					&cli.StringFlag{Name: flagFormat, Value: "pem", Usage: "`FORMAT` of the output: pem or spiffe"},
				),
				Action: bundleShow,
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
		return client.bundles.GetBundle(ctx, &adminv1.GetBundleRequest{})
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
