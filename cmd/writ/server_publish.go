package main

import (
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"writ.dev/writ/ca/server"
)

// publishFlags are writ server run's flags for the JWT issuer, the SPIFFE
// bundle endpoint and OIDC discovery.
func publishFlags() []cli.Flag {
	return []cli.Flag{
		altsrc.NewStringFlag(&cli.StringFlag{Name: "jwt-issuer", Usage: "issuer URL set as iss in JWT-SVIDs and published by OIDC discovery, e.g. https://oidc.example.org", EnvVars: []string{"WRIT_JWT_ISSUER"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "federation-bind-address", Usage: "host:port of the SPIFFE bundle endpoint that federated trust domains fetch this bundle from (off when empty)", EnvVars: []string{"WRIT_FEDERATION_BIND_ADDRESS"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "federation-profile", Value: server.ProfileHTTPSSPIFFE, Usage: "bundle endpoint profile: https_spiffe (authenticated by the server's own SVID) or https_web (--federation-cert and --federation-key)", EnvVars: []string{"WRIT_FEDERATION_PROFILE"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "federation-endpoint-spiffe-id", Usage: "SPIFFE ID the https_spiffe bundle endpoint authenticates as (default: spiffe://<trust domain>/writ/server)", EnvVars: []string{"WRIT_FEDERATION_ENDPOINT_SPIFFE_ID"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "federation-cert", Usage: "PEM `FILE` of the https_web bundle endpoint's certificate chain (reloaded when it changes)", EnvVars: []string{"WRIT_FEDERATION_CERT"}, TakesFile: true}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "federation-key", Usage: "PEM `FILE` of the https_web bundle endpoint's private key (reloaded when it changes)", EnvVars: []string{"WRIT_FEDERATION_KEY"}, TakesFile: true}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "oidc-bind-address", Usage: "host:port of OIDC discovery (/.well-known/openid-configuration) and the JWKS (/keys) for gateways (off when empty; needs --jwt-issuer)", EnvVars: []string{"WRIT_OIDC_BIND_ADDRESS"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "oidc-cert", Usage: "PEM `FILE` of the OIDC endpoint's certificate chain (reloaded when it changes)", EnvVars: []string{"WRIT_OIDC_CERT"}, TakesFile: true}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "oidc-key", Usage: "PEM `FILE` of the OIDC endpoint's private key (reloaded when it changes)", EnvVars: []string{"WRIT_OIDC_KEY"}, TakesFile: true}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "oidc-insecure-http", Usage: "serve OIDC discovery over plain HTTP, for a TLS-terminating proxy or CDN in front", EnvVars: []string{"WRIT_OIDC_INSECURE_HTTP"}}),
	}
}

// publishConfig reads the publishing flags.
func publishConfig(c *cli.Context) (issuer string, fed server.FederationConfig, oidc server.OIDCConfig, err error) {
	fed = server.FederationConfig{
		BindAddress: c.String("federation-bind-address"),
		CertFile:    c.String("federation-cert"),
		KeyFile:     c.String("federation-key"),
	}
	if fed.BindAddress != "" || c.IsSet("federation-profile") {
		fed.Profile = c.String("federation-profile")
	}
	if s := c.String("federation-endpoint-spiffe-id"); s != "" {
		if fed.EndpointID, err = spiffeid.FromString(s); err != nil {
			return "", fed, oidc, usagef(c, "--federation-endpoint-spiffe-id: %v", err)
		}
	}
	oidc = server.OIDCConfig{
		BindAddress:  c.String("oidc-bind-address"),
		CertFile:     c.String("oidc-cert"),
		KeyFile:      c.String("oidc-key"),
		InsecureHTTP: c.Bool("oidc-insecure-http"),
	}
	return c.String("jwt-issuer"), fed, oidc, nil
}
