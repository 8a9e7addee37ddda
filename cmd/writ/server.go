package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	ds "writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/datastore/pgstore"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/server"
	"writ.dev/writ/internal/nodump"
)

// defaultDataDir is where the server keeps its state unless told
// otherwise; the admin commands look for the socket there too.
const defaultDataDir = "writ-data"

func serverCommand() *cli.Command {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "config", Usage: "YAML file of flag values (keys are flag names); flags and environment variables override it", EnvVars: []string{"WRIT_CONFIG"}, TakesFile: true},
		altsrc.NewStringFlag(&cli.StringFlag{Name: "trust-domain", Usage: "the trust domain this server is the authority of, e.g. example.org", EnvVars: []string{"WRIT_TRUST_DOMAIN"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "data-dir", Value: defaultDataDir, Usage: "directory of the server's state (created 0700)", EnvVars: []string{"WRIT_DATA_DIR"}, TakesFile: true}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "bind-address", Value: server.DefaultBindAddress, Usage: "host:port of the TLS endpoint agents use", EnvVars: []string{"WRIT_BIND_ADDRESS"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "admin-socket", Usage: "path of the admin API Unix socket (default: admin.sock in the data dir)", EnvVars: []string{"WRIT_ADMIN_SOCKET"}, TakesFile: true}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "ca-ttl", Value: server.DefaultCATTL, Usage: "lifetime of each CA certificate and JWT signing key", EnvVars: []string{"WRIT_CA_TTL"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "bundle-refresh-hint", Value: server.DefaultBundleRefreshHint, Usage: "the bundle's refresh hint (spiffe_refresh_hint): how often federated trust domains fetch it again; a new CA key waits this long in the bundle before it may sign", EnvVars: []string{"WRIT_BUNDLE_REFRESH_HINT"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "default-x509-svid-ttl", Value: server.DefaultX509SVIDTTL, Usage: "X.509-SVID lifetime for entries that set none", EnvVars: []string{"WRIT_DEFAULT_X509_SVID_TTL"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "default-jwt-svid-ttl", Value: server.DefaultJWTSVIDTTL, Usage: "JWT-SVID lifetime for entries that set none", EnvVars: []string{"WRIT_DEFAULT_JWT_SVID_TTL"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "ca-key-type", Value: server.DefaultKeyType, Usage: "key type of new CA keys: ec-p256, ec-p384 or rsa-2048", EnvVars: []string{"WRIT_CA_KEY_TYPE"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "datastore", Value: server.BackendBolt, Usage: "where the server keeps its state: bolt (a file in the data dir) or a postgres:// URL (PostgreSQL, shared by several servers)", EnvVars: []string{"WRIT_DATASTORE"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "datastore-password-file", Usage: "`FILE` holding the datastore password (not readable by group or others)", EnvVars: []string{"WRIT_DATASTORE_PASSWORD_FILE"}, TakesFile: true}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "admin-uid", Usage: "uid allowed to call the admin API besides root and the server's own uid (repeatable)", EnvVars: []string{"WRIT_ADMIN_UIDS"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "admin-bind-address", Usage: "host:port where the admin API is also served over mutual TLS to callers with an admin X.509-SVID (an --admin-id, or the SPIFFE ID of an entry created with --admin); off if empty", EnvVars: []string{"WRIT_ADMIN_BIND_ADDRESS"}}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "admin-id", Usage: "SPIFFE `ID` of this trust domain that may call the admin API over --admin-bind-address whatever the entries say (repeatable)", EnvVars: []string{"WRIT_ADMIN_IDS"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-format", Value: "text", Usage: "log format: text or json", EnvVars: []string{"WRIT_LOG_FORMAT"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-level", Value: "info", Usage: "log level: debug, info, warn or error", EnvVars: []string{"WRIT_LOG_LEVEL"}}),
	}
	flags = append(flags, keyFlags()...)
	flags = append(flags, uiFlags()...)
	flags = append(flags, publishFlags()...)
	flags = append(flags, oauthServerFlags()...)
	flags = append(flags, serverNodeAttestFlags()...)
	flags = append(flags, observeFlags("WRIT_")...)
	return &cli.Command{
		Name:  "server",
		Usage: "run and check the CA server",
		Subcommands: []*cli.Command{
			{
				Name:   "run",
				Usage:  "run the CA server until SIGINT or SIGTERM",
				Flags:  flags,
				Before: loadConfigFile(flags),
				Action: serverRun,
			},
			{
				Name:  "healthcheck",
				Usage: "exit 0 if the server is serving, 1 otherwise",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "data-dir", Value: defaultDataDir, EnvVars: []string{"WRIT_DATA_DIR"}, Usage: "the server's data dir (to find its admin socket)"},
					&cli.StringFlag{Name: "admin-socket", EnvVars: []string{"WRIT_ADMIN_SOCKET"}, Usage: "path of the admin API socket (default: admin.sock in the data dir)"},
					&cli.DurationFlag{Name: "timeout", Value: 3 * time.Second, Usage: "how long to wait for an answer"},
				},
				Action: serverHealthcheck,
			},
			serverListCommand(),
			serverBackupCommand(),
			serverRestoreCommand(),
		},
	}
}

// loadConfigFile applies a YAML config file, when --config names one, to
// the flags that were not set on the command line or in the environment.
func loadConfigFile(flags []cli.Flag) cli.BeforeFunc {
	fromFile := altsrc.InitInputSourceWithContext(flags, altsrc.NewYamlSourceFromFlagFunc("config"))
	return func(c *cli.Context) error {
		if c.String("config") == "" {
			return nil
		}
		if err := checkConfigKeys(c.String("config"), flags); err != nil {
			return fmt.Errorf("config file %s: %w", c.String("config"), err)
		}
		if err := fromFile(c); err != nil {
			return fmt.Errorf("config file %s: %w", c.String("config"), err)
		}
		return nil
	}
}

func serverRun(c *cli.Context) error {
	logger, err := newLogger(c.App.ErrWriter, c.String("log-format"), c.String("log-level"))
	if err != nil {
		return usagef(c, "%v", err)
	}
	if err := nodump.Disable(); err != nil {
		logger.Warn("private keys could reach a core file", "err", err)
	}
	tdName := c.String("trust-domain")
	if tdName == "" {
		return usagef(c, "%v", errors.New("--trust-domain is required"))
	}
	td, err := spiffeid.TrustDomainFromString(tdName)
	if err != nil || td.Name() != tdName {
		return usagef(c, "%v", fmt.Errorf("--trust-domain %q is not a valid trust domain name (lowercase letters, digits, '.', '-', '_'; no scheme or port)", tdName))
	}
	var uids []uint32
	for _, s := range c.StringSlice("admin-uid") {
		for _, part := range strings.Split(s, ",") {
			uid, err := strconv.ParseUint(strings.TrimSpace(part), 10, 32)
			if err != nil {
				return usagef(c, "%v", fmt.Errorf("--admin-uid %q is not a uid", part))
			}
			uids = append(uids, uint32(uid))
		}
	}
	var adminIDs []spiffeid.ID
	for _, v := range c.StringSlice("admin-id") {
		id, err := entry.ParseIDInDomain(td, v)
		if err != nil {
			return usagef(c, "--admin-id: %v", err)
		}
		adminIDs = append(adminIDs, id)
	}
	if len(adminIDs) > 0 && c.String("admin-bind-address") == "" {
		return usagef(c, "--admin-id needs --admin-bind-address")
	}
	datastore := c.String("datastore")
	backend, err := server.ParseDatastore(datastore)
	if err != nil {
		return usagef(c, "--datastore: %v", err)
	}
	var password string
	if path := c.String("datastore-password-file"); path != "" {
		if backend == server.BackendBolt {
			return usagef(c, "--datastore-password-file is for a database datastore, not %s", server.BackendBolt)
		}
		if password, err = readPasswordFile(path); err != nil {
			return fmt.Errorf("--datastore-password-file: %w", err)
		}
	}
	uiAddress, uiToken, err := uiSettings(c)
	if err != nil {
		return err
	}
	jwtIssuer, federation, oidc, err := publishConfig(c)
	if err != nil {
		return err
	}
	if err := checkObserveFlags(c); err != nil {
		return err
	}
	m, metricsHandler := serverMetrics(c)
	nodeAttestors, err := serverNodeAttestors(c, td, logger)
	if err != nil {
		return usagef(c, "%v", err)
	}
	srv, err := server.New(server.Config{
		NodeAttestors:      nodeAttestors,
		Metrics:            m,
		MetricsAddress:     c.String("metrics-address"),
		MetricsHandler:     metricsHandler,
		HealthAddress:      c.String("health-address"),
		UIAddress:          uiAddress,
		UIToken:            uiToken,
		JWTIssuer:          jwtIssuer,
		Federation:         federation,
		OIDC:               oidc,
		OAuth:              oauthServerConfig(c),
		TrustDomain:        td,
		DataDir:            c.String("data-dir"),
		BindAddress:        c.String("bind-address"),
		AdminSocket:        c.String("admin-socket"),
		CATTL:              c.Duration("ca-ttl"),
		BundleRefreshHint:  c.Duration("bundle-refresh-hint"),
		DefaultX509SVIDTTL: c.Duration("default-x509-svid-ttl"),
		DefaultJWTSVIDTTL:  c.Duration("default-jwt-svid-ttl"),
		CAKeyType:          c.String("ca-key-type"),
		AdminUIDs:          uids,
		AdminBindAddress:   c.String("admin-bind-address"),
		AdminIDs:           adminIDs,
		Logger:             logger,
		Datastore:          datastore,
		DatastorePassword:  password,
		OpenPostgres: func(ctx context.Context, connString, password string) (ds.Store, error) {
			return pgstore.Open(ctx, pgstore.Config{ConnString: connString, Password: password, Logger: logger})
		},
		Keys: keysConfig(c),
	})
	if err != nil {
		return usagef(c, "%v", err)
	}
	defer runServerMemoryLimit(c.Context)()
	if err := srv.Run(c.Context); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	return nil
}

func serverHealthcheck(c *cli.Context) error {
	socket := c.String("admin-socket")
	if socket == "" {
		socket = filepath.Join(c.String("data-dir"), server.AdminSocket)
	}
	if err := checkHealth(c.Context, "server", socket, c.Duration("timeout")); err != nil {
		return fmt.Errorf("server is not healthy: %w", err)
	}
	fmt.Fprintln(c.App.Writer, "server is serving")
	return nil
}

// newLogger builds the process logger writing to w.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q: use text or json", format)
	}
}
