package main

import (
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"writ.dev/writ/ca/server"
)

// keyFlags are the flags of `writ server run` that choose where the CA
// keys live and who signs the CA certificates. Like every server flag,
// each has an environment variable and a config file key (its name).
func keyFlags() []cli.Flag {
	return []cli.Flag{
		altsrc.NewStringFlag(&cli.StringFlag{Name: "upstream-authority", Usage: "who signs the server's CA certificates: empty (self-signed), disk (the CA in --upstream-cert and --upstream-key), step (a step-ca, --step-*), cfssl (a cfssl server, --cfssl-*) or writ (a parent Writ deployment, through its agent's socket --upstream-socket; this server must match a --downstream entry there)", EnvVars: []string{"WRIT_UPSTREAM_AUTHORITY"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "upstream-cert", Usage: "PEM file of the upstream CA certificate, then the intermediates above it", EnvVars: []string{"WRIT_UPSTREAM_CERT"}, TakesFile: true}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "upstream-key", Usage: "PEM file of the upstream CA's private key (no group or other access)", EnvVars: []string{"WRIT_UPSTREAM_KEY"}, TakesFile: true}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "upstream-bundle", Usage: "PEM file of the upstream root certificate(s), published as trust anchors (disk: default the last certificate of --upstream-cert, if self-signed; cfssl: required)", EnvVars: []string{"WRIT_UPSTREAM_BUNDLE"}, TakesFile: true}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "step-ca-url", Usage: "base URL of the step-ca for --upstream-authority step, e.g. https://ca.example.org:9000", EnvVars: []string{"WRIT_STEP_CA_URL"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "step-root", Usage: "PEM file of the step-ca's root certificate: the trust anchor, and the only root its TLS certificate is checked against", EnvVars: []string{"WRIT_STEP_ROOT"}, TakesFile: true}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "step-provisioner", Usage: "name of the step-ca JWK provisioner allowed to issue CA certificates", EnvVars: []string{"WRIT_STEP_PROVISIONER"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "step-provisioner-password-file", Usage: "file holding the JWK provisioner's password (no group or other access)", EnvVars: []string{"WRIT_STEP_PROVISIONER_PASSWORD_FILE"}, TakesFile: true}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "cfssl-url", Usage: "base URL of the cfssl server for --upstream-authority cfssl, e.g. http://cfssl.internal:8888", EnvVars: []string{"WRIT_CFSSL_URL"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "cfssl-auth-key-file", Usage: "file holding the cfssl profile's auth key as hex digits (no group or other access)", EnvVars: []string{"WRIT_CFSSL_AUTH_KEY_FILE"}, TakesFile: true}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "cfssl-profile", Usage: "cfssl signing profile that issues CA certificates (default: cfssl's default profile)", EnvVars: []string{"WRIT_CFSSL_PROFILE"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "upstream-socket", Usage: "for --upstream-authority writ: the parent deployment's agent socket (its Workload API socket), an absolute path", EnvVars: []string{"WRIT_UPSTREAM_SOCKET"}, TakesFile: true}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "key-manager", Value: server.KeyManagerDisk, Usage: "where CA private keys live: disk (files in the data dir), memory (lost on exit: a restart makes a new CA) or pkcs11 (generated in and used from a PKCS#11 token)", EnvVars: []string{"WRIT_KEY_MANAGER"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "pkcs11-module", Usage: "path of the PKCS#11 module (shared library) for --key-manager pkcs11", EnvVars: []string{"WRIT_PKCS11_MODULE"}, TakesFile: true}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "pkcs11-token-label", Usage: "label of the PKCS#11 token holding the CA keys", EnvVars: []string{"WRIT_PKCS11_TOKEN_LABEL"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "pkcs11-pin-file", Usage: "file holding the token's user PIN (no group or other access)", EnvVars: []string{"WRIT_PKCS11_PIN_FILE"}, TakesFile: true}),
	}
}

// keysConfig reads the key flags.
func keysConfig(c *cli.Context) server.KeysConfig {
	return server.KeysConfig{
		KeyManager:        c.String("key-manager"),
		PKCS11Module:      c.String("pkcs11-module"),
		PKCS11TokenLabel:  c.String("pkcs11-token-label"),
		PKCS11PINFile:     c.String("pkcs11-pin-file"),
		UpstreamAuthority: c.String("upstream-authority"),
		UpstreamCert:      c.String("upstream-cert"),
		UpstreamKey:       c.String("upstream-key"),
		UpstreamBundle:    c.String("upstream-bundle"),

		StepCAURL:                   c.String("step-ca-url"),
		StepRoot:                    c.String("step-root"),
		StepProvisioner:             c.String("step-provisioner"),
		StepProvisionerPasswordFile: c.String("step-provisioner-password-file"),
		CFSSLURL:                    c.String("cfssl-url"),
		CFSSLAuthKeyFile:            c.String("cfssl-auth-key-file"),
		CFSSLProfile:                c.String("cfssl-profile"),
		UpstreamSocket:              c.String("upstream-socket"),
	}
}
