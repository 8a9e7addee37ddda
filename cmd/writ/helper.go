package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"writ.dev/writ/svidfiles"
)

// helperCommand is `writ helper`: files for software that does not speak
// SPIFFE, like spiffe-helper.
func helperCommand() *cli.Command {
	return &cli.Command{
		Name:        "helper",
		Usage:       "write this process's SVID, key and bundles to files and keep them up to date",
		Action:      groupAction,
		Subcommands: []*cli.Command{helperRunCommand()},
	}
}

func helperRunCommand() *cli.Command {
	return &cli.Command{
		Name:  "run",
		Usage: "write the SVID files, then rewrite them on every rotation or bundle change and signal or run a program",
		Description: "Writes the default X.509-SVID to --cert-dir: " + svidfiles.DefaultSVIDFileName + " (chain, leaf first), " + svidfiles.DefaultSVIDKeyFileName + " (PKCS#8, 0600),\n" +
			svidfiles.DefaultSVIDBundleFileName + " (the trust domain's X.509 authorities) and federated_bundle.<trust domain>.pem for\n" +
			"each federated trust domain, all changing at once (links into a new .writ-x509-<id>.* directory). After each\n" +
			"change it sends --signal to --cmd's process or to the pid in --pid-file. --cmd is started after\n" +
			"the first write and kept running; when it exits, so does the helper. --daemon-mode=false writes\n" +
			"once and exits. --config reads spiffe-helper's HCL configuration; flags override its keys.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Usage: "spiffe-helper configuration `FILE` (HCL); flags override its keys", TakesFile: true},
			&cli.StringFlag{Name: flagWorkloadSocket, Usage: "the agent's Workload API socket: a `PATH`, or unix:///absolute/path (agent_address)", DefaultText: workloadSocketDefaultText, TakesFile: true},
			&cli.StringFlag{Name: "cert-dir", Usage: "existing `DIR` to write the files to (cert_dir)", TakesFile: true},
			&cli.StringFlag{Name: "svid-file-name", Value: svidfiles.DefaultSVIDFileName, Usage: "file `NAME` of the certificate chain (svid_file_name)"},
			&cli.StringFlag{Name: "svid-key-file-name", Value: svidfiles.DefaultSVIDKeyFileName, Usage: "file `NAME` of the private key (svid_key_file_name)"},
			&cli.StringFlag{Name: "svid-bundle-file-name", Value: svidfiles.DefaultSVIDBundleFileName, Usage: "file `NAME` of the trust bundle (svid_bundle_file_name)"},
			&cli.StringFlag{Name: "file-format", Value: string(svidfiles.PEM), Usage: "`FORMAT` of certificate and key files: pem or der (file_format)"},
			&cli.StringFlag{Name: "cert-file-mode", Value: "0644", Usage: "octal `MODE` of certificate and bundle files (cert_file_mode)"},
			&cli.StringFlag{Name: "key-file-mode", Value: "0600", Usage: "octal `MODE` of the key file (key_file_mode)"},
			&cli.BoolFlag{Name: "add-intermediates-to-bundle", Usage: "write intermediate CA certificates to the bundle file, not after the leaf (add_intermediates_to_bundle)"},
			&cli.BoolFlag{Name: "include-federated-domains", Usage: "add federated trust domains' authorities to the bundle file (include_federated_domains)"},
			&cli.StringSliceFlag{Name: "jwt-svid", Usage: "write a JWT-SVID for `AUDIENCE=FILE`, refreshed at half its lifetime; repeat for several (jwt_svids)"},
			&cli.StringFlag{Name: "jwt-bundle-file-name", Usage: "file `NAME` of the JWT bundle, a JWKS (jwt_bundle_file_name)"},
			&cli.BoolFlag{Name: "daemon-mode", Value: true, Usage: "keep the files up to date; --daemon-mode=false writes them once and exits (daemon_mode)"},
			&cli.StringFlag{Name: "signal", Usage: "`SIGNAL` to send after each change, such as SIGHUP (renew_signal)"},
			&cli.StringFlag{Name: "pid-file", Usage: "`FILE` holding the pid to send --signal to (pid_file_name)", TakesFile: true},
			&cli.StringFlag{Name: "cmd", Usage: "`PROGRAM` to start after the first write and keep running (cmd)"},
			&cli.StringFlag{Name: "cmd-args", Usage: "its `ARGS`, split as a shell would (cmd_args)"},
			&cli.StringFlag{Name: "log-format", Value: "text", Usage: "log `FORMAT`: text or json"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "log `LEVEL`: debug, info, warn or error"},
		},
		Action: helperRun,
	}
}

func helperRun(c *cli.Context) error {
	if c.Args().Present() {
		return usagef(c, "unexpected argument %q", c.Args().First())
	}
	log, err := newLogger(c.App.ErrWriter, c.String("log-format"), c.String("log-level"))
	if err != nil {
		return usagef(c, "%v", err)
	}
	cfg, err := helperConfig(c)
	if err != nil {
		return err
	}
	h, err := svidfiles.New(cfg, nil, log)
	if err != nil {
		if errors.Is(err, svidfiles.ErrConfig) {
			return usagef(c, "%v", err)
		}
		return err
	}
	return h.Run(c.Context)
}

// helperConfig is the configuration file's keys, overridden by the flags
// given.
func helperConfig(c *cli.Context) (svidfiles.Config, error) {
	cfg := svidfiles.DefaultConfig()
	fromFile := map[string]bool{}
	if path := c.String("config"); path != "" {
		keys, err := svidfiles.LoadConfigFile(path, &cfg)
		if err != nil {
			if errors.Is(err, svidfiles.ErrConfig) || errors.Is(err, svidfiles.ErrSyntax) {
				return cfg, usagef(c, "--config %v", err)
			}
			return cfg, err
		}
		for _, k := range keys {
			fromFile[k] = true
		}
	}
	// A flag applies if given, or if the file did not set its key (its
	// default then).
	use := func(flag, key string) bool { return c.IsSet(flag) || !fromFile[key] }
	if c.IsSet(flagWorkloadSocket) || !fromFile["agent_address"] {
		p, isDefault, err := workloadSocket(c)
		if err != nil {
			return cfg, err
		}
		cfg.SocketPath, cfg.CheckSocket = p, isDefault
	}
	strs := []struct {
		flag, key string
		dst       *string
	}{
		{"cert-dir", "cert_dir", &cfg.CertDir},
		{"svid-file-name", "svid_file_name", &cfg.SVIDFileName},
		{"svid-key-file-name", "svid_key_file_name", &cfg.SVIDKeyFileName},
		{"svid-bundle-file-name", "svid_bundle_file_name", &cfg.SVIDBundleFileName},
		{"jwt-bundle-file-name", "jwt_bundle_file_name", &cfg.JWTBundleFileName},
		{"signal", "renew_signal", &cfg.RenewSignal},
		{"pid-file", "pid_file_name", &cfg.PIDFileName},
		{"cmd", "cmd", &cfg.Cmd},
		{"cmd-args", "cmd_args", &cfg.CmdArgs},
	}
	for _, s := range strs {
		if use(s.flag, s.key) {
			*s.dst = c.String(s.flag)
		}
	}
	bools := []struct {
		flag, key string
		dst       *bool
	}{
		{"add-intermediates-to-bundle", "add_intermediates_to_bundle", &cfg.AddIntermediatesToBundle},
		{"include-federated-domains", "include_federated_domains", &cfg.IncludeFederatedDomains},
		{"daemon-mode", "daemon_mode", &cfg.DaemonMode},
	}
	for _, b := range bools {
		if use(b.flag, b.key) {
			*b.dst = c.Bool(b.flag)
		}
	}
	if use("file-format", "file_format") {
		f, err := svidfiles.ParseFormat(c.String("file-format"))
		if err != nil {
			return cfg, usagef(c, "--file-format: %v", err)
		}
		cfg.Format = f
	}
	modes := []struct {
		flag, key string
		dst       *fs.FileMode
	}{
		{"cert-file-mode", "cert_file_mode", &cfg.CertFileMode},
		{"key-file-mode", "key_file_mode", &cfg.KeyFileMode},
	}
	for _, m := range modes {
		if use(m.flag, m.key) {
			n, err := strconv.ParseUint(c.String(m.flag), 8, 32)
			if err != nil || n > 0o777 {
				return cfg, usagef(c, "--%s %q is not an octal file mode such as 0644", m.flag, c.String(m.flag))
			}
			*m.dst = fs.FileMode(n)
		}
	}
	if c.IsSet("jwt-svid") || !fromFile["jwt_svids"] {
		cfg.JWTSVIDs = nil
		for _, v := range c.StringSlice("jwt-svid") {
			aud, file, ok := strings.Cut(v, "=")
			if !ok || aud == "" || file == "" {
				return cfg, usagef(c, "--jwt-svid %q: want AUDIENCE=FILE", v)
			}
			cfg.JWTSVIDs = append(cfg.JWTSVIDs, svidfiles.JWTSVID{Audience: aud, FileName: file})
		}
	}
	if cfg.CertDir == "" {
		return cfg, usagef(c, "--cert-dir (or cert_dir in --config) is required")
	}
	if _, err := os.Stat(cfg.CertDir); err != nil {
		return cfg, fmt.Errorf("--cert-dir: %w", err)
	}
	return cfg, nil
}
