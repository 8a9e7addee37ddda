package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/urfave/cli/v2"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/entry"
)

// maxBundleFile bounds a bundle file read by bundle set.
const maxBundleFile = 1 << 20

// jsonBundle is a federated bundle as --output json prints it.
type jsonBundle struct {
	TrustDomain     string `json:"trust_domain"`
	Sequence        uint64 `json:"sequence"`
	RefreshHint     int64  `json:"refresh_hint_seconds"`
	X509Authorities int    `json:"x509_authorities"`
	JWTAuthorities  int    `json:"jwt_authorities"`
}

func bundleSummary(w *adminv1.GetBundleResponse) (*jsonBundle, error) {
	td, err := spiffeid.TrustDomainFromString(w.GetTrustDomain())
	if err != nil {
		return nil, fmt.Errorf("the server sent an invalid trust domain: %w", err)
	}
	b, err := spiffebundle.Parse(td, w.GetSpiffeBundle())
	if err != nil {
		return nil, fmt.Errorf("the server sent an invalid bundle of %s: %w", td.Name(), err)
	}
	hint, _ := b.RefreshHint()
	return &jsonBundle{TrustDomain: td.Name(), Sequence: w.GetSequence(), RefreshHint: int64(hint.Seconds()), X509Authorities: len(b.X509Authorities()), JWTAuthorities: len(b.JWTAuthorities())}, nil
}

// readBundleFile reads a bundle of td in SPIFFE or PEM format (format
// empty: detected) and returns it in SPIFFE format.
func readBundleFile(c *cli.Context, td spiffeid.TrustDomain, path, format string) ([]byte, error) {
	var r io.Reader = c.App.Reader
	if path != "-" {
		f, err := os.Open(path) //nolint:gosec // the operator names the bundle file
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, maxBundleFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxBundleFile {
		return nil, fmt.Errorf("%s is larger than %d KiB", path, maxBundleFile>>10)
	}
	if format == "" {
		format = "spiffe"
		if bytes.HasPrefix(bytes.TrimSpace(data), []byte("-----BEGIN")) {
			format = "pem"
		}
	}
	var b *spiffebundle.Bundle
	switch format {
	case "spiffe":
		b, err = spiffebundle.Parse(td, data)
	case "pem":
		var xb *x509bundle.Bundle
		if xb, err = x509bundle.Parse(td, data); err == nil {
			b = spiffebundle.FromX509Bundle(xb)
		}
	default:
		return nil, usagef(c, "unknown --%s %q: want spiffe or pem", flagFormat, format)
	}
	if err != nil {
		return nil, fmt.Errorf("%s is not a %s bundle of %s: %w", path, format, td.Name(), err)
	}
	return b.Marshal()
}

func bundleSet(c *cli.Context) error {
	a, err := newAdminCmd(c)
	if err != nil {
		return err
	}
	name := c.String("trust-domain")
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil || td.Name() != name {
		return usagef(c, "--trust-domain %q is not a valid trust domain name", name)
	}
	doc, err := readBundleFile(c, td, c.String("file"), c.String(flagFormat))
	if err != nil {
		return err
	}
	resp, err := callAdmin(c.Context, a, func(ctx context.Context, client *adminClient) (*adminv1.GetBundleResponse, error) {
		return client.bundles.SetFederatedBundle(ctx, &adminv1.SetFederatedBundleRequest{TrustDomain: td.Name(), SpiffeBundle: doc})
	})
	if err != nil {
		return err
	}
	sum, err := bundleSummary(resp)
	if err != nil {
		return err
	}
	if a.format == jsonOutput {
		return writeJSON(c.App.Writer, sum)
	}
	fmt.Fprintf(c.App.Writer, "bundle of %s set: sequence %d, %d X.509 and %d JWT authorities\n", sum.TrustDomain, sum.Sequence, sum.X509Authorities, sum.JWTAuthorities)
	return nil
}

func bundleList(c *cli.Context) error {
	a, err := newAdminCmd(c)
	if err != nil {
		return err
	}
	resp, err := callAdmin(c.Context, a, func(ctx context.Context, client *adminClient) (*adminv1.ListFederatedBundlesResponse, error) {
		return client.bundles.ListFederatedBundles(ctx, &adminv1.ListFederatedBundlesRequest{})
	})
	if err != nil {
		return err
	}
	out := []*jsonBundle{}
	for _, w := range resp.GetBundles() {
		sum, err := bundleSummary(w)
		if err != nil {
			return err
		}
		out = append(out, sum)
	}
	if a.format == jsonOutput {
		return writeJSON(c.App.Writer, out)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TRUST DOMAIN\tSEQUENCE\tX.509 AUTHORITIES\tJWT AUTHORITIES")
	for _, b := range out {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\n", entry.Printable(b.TrustDomain), b.Sequence, b.X509Authorities, b.JWTAuthorities)
	}
	return tw.Flush()
}

func bundleDelete(c *cli.Context) error {
	a, err := newAdminCmd(c)
	if err != nil {
		return err
	}
	name := c.String("trust-domain")
	if _, err := callAdmin(c.Context, a, func(ctx context.Context, client *adminClient) (*adminv1.DeleteFederatedBundleResponse, error) {
		return client.bundles.DeleteFederatedBundle(ctx, &adminv1.DeleteFederatedBundleRequest{TrustDomain: name})
	}); err != nil {
		return err
	}
	if a.format == jsonOutput {
		return writeJSON(c.App.Writer, map[string]string{"trust_domain": name})
	}
	fmt.Fprintf(c.App.Writer, "bundle of %s deleted\n", entry.Printable(name))
	return nil
}
