package main

import (
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"writ.dev/writ/ca/oauth"
	"writ.dev/writ/ca/server"
)

// oauthServerFlags are writ server run's flags for the OAuth 2.0
// authorization server.
func oauthServerFlags() []cli.Flag {
	return []cli.Flag{
		altsrc.NewStringFlag(&cli.StringFlag{Name: "oauth-bind-address", Usage: "host:port of the OAuth 2.0 token, introspection and revocation endpoints, where workloads get access tokens with their SVIDs (off when empty)", EnvVars: []string{"WRIT_OAUTH_BIND_ADDRESS"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "oauth-issuer", Usage: "https origin clients reach the OAuth endpoints at, the iss of access tokens (default: https://<oauth bind address>)", EnvVars: []string{"WRIT_OAUTH_ISSUER"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "oauth-cert", Usage: "PEM `FILE` of the OAuth endpoint's certificate chain, reloaded when it changes (default: the server's own X.509-SVID)", EnvVars: []string{"WRIT_OAUTH_CERT"}, TakesFile: true}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "oauth-key", Usage: "PEM `FILE` of the OAuth endpoint's private key, reloaded when it changes", EnvVars: []string{"WRIT_OAUTH_KEY"}, TakesFile: true}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "oauth-token-ttl", Value: oauth.DefaultTokenTTL, Usage: "longest lifetime of an OAuth access token (never beyond the SVID it was issued on)", EnvVars: []string{"WRIT_OAUTH_TOKEN_TTL"}}),
	}
}

// oauthServerConfig reads the OAuth flags. The TTL counts only with a
// bind address, so that its default alone does not ask for one.
func oauthServerConfig(c *cli.Context) server.OAuthConfig {
	cfg := server.OAuthConfig{
		BindAddress: c.String("oauth-bind-address"),
		Issuer:      c.String("oauth-issuer"),
		CertFile:    c.String("oauth-cert"),
		KeyFile:     c.String("oauth-key"),
	}
	if cfg.BindAddress != "" || c.IsSet("oauth-token-ttl") {
		cfg.TokenTTL = c.Duration("oauth-token-ttl")
	}
	return cfg
}
