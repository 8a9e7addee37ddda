package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"writ.dev/writ/agent"
	"writ.dev/writ/agent/agentproc"
	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/internal/memlimit"
	"writ.dev/writ/internal/nodump"
	"writ.dev/writ/internal/unixsock"
	"writ.dev/writ/workloadapi"
	"writ.dev/writ/workloadapi/sdsv3"
)

// defaultAgentDataDir is where the agent keeps its state unless told
// otherwise; `agent healthcheck` looks for its socket there too.
const defaultAgentDataDir = "writ-agent-data"

// agentMemoryLimit and agentMemoryHeadroom set the agent's soft memory
// limit (the Go runtime's GOMEMLIMIT) unless the environment sets one:
// at least agentMemoryLimit, and agentMemoryHeadroom above what the agent
// still holds after a garbage collection (memlimit.Run). The collector
// works harder as the heap nears the limit, so that a small agent stays
// within it; the headroom keeps it from running without pause once the
// live heap itself nears the floor (about 16 MiB with 10,000 entries),
// which slowed every Workload API call the more entries the agent held.
const (
	agentMemoryLimit    = 32 << 20
	agentMemoryHeadroom = 8 << 20
)

func agentRunCommand() *cli.Command {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "config", Usage: "YAML file of flag values (keys are flag names); flags and environment variables override it", EnvVars: []string{"WRIT_CONFIG"}, TakesFile: true},
		newMultiValueFlag(&cli.StringSliceFlag{Name: "server-address", DefaultText: agent.DefaultServerAddress, Usage: "host:port of a CA server's node API; repeat the flag, or separate with commas, for several servers sharing a datastore (the agent fails over between them)", EnvVars: []string{"WRIT_SERVER_ADDRESS"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "trust-domain", Usage: "the trust domain of the server, e.g. example.org (required)", EnvVars: []string{"WRIT_TRUST_DOMAIN"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "data-dir", Value: defaultAgentDataDir, Usage: "directory of the agent's SVID, key and bundle (created 0700)", EnvVars: []string{"WRIT_AGENT_DATA_DIR"}, TakesFile: true}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "socket-path", Value: defaultWorkloadSocket, Usage: "path of the Workload API socket; its directory must be reachable by the workloads (not inside the 0700 data dir)", EnvVars: []string{"WRIT_AGENT_SOCKET_PATH"}, TakesFile: true}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "workload-max-connections-per-uid", Value: workloadapi.DefaultMaxConnectionsPerUID, Usage: "most Workload API connections one local uid may hold open at once (of 1024 in all); more are closed at once", EnvVars: []string{"WRIT_WORKLOAD_MAX_CONNECTIONS_PER_UID"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "join-token", Usage: "one-time token to attest with when the agent has no valid SVID (ignored otherwise); prefer the environment variable, as command lines are visible to other users", EnvVars: []string{"WRIT_JOIN_TOKEN"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "trust-bundle", Usage: "PEM `FILE` of the CA certificates that authenticate the server at attestation", EnvVars: []string{"WRIT_TRUST_BUNDLE"}, TakesFile: true}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "insecure-bootstrap", Usage: "attest without authenticating the server, and trust the bundle it returns (unsafe outside tests)", EnvVars: []string{"WRIT_INSECURE_BOOTSTRAP"}}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "svid-cache-size", Value: svidcache.DefaultMaxX509SVIDs, Usage: "most X.509-SVIDs kept for entries no connected workload matches (least recently used dropped first); others are signed when a workload asks", EnvVars: []string{"WRIT_SVID_CACHE_SIZE"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "sds-default-svid-name", Value: sdsv3.DefaultSVIDName, Usage: "Envoy SDS resource name of the caller's first X.509-SVID", EnvVars: []string{"WRIT_SDS_DEFAULT_SVID_NAME"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "sds-default-bundle-name", Value: sdsv3.DefaultBundleName, Usage: "Envoy SDS resource name of the trust domain's bundle", EnvVars: []string{"WRIT_SDS_DEFAULT_BUNDLE_NAME"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "sds-default-all-bundles-name", Value: sdsv3.DefaultAllBundlesName, Usage: "Envoy SDS resource name of every trust domain's bundle, for Envoy's SPIFFE validator", EnvVars: []string{"WRIT_SDS_DEFAULT_ALL_BUNDLES_NAME"}}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "sds-disable-spiffe-cert-validation", Usage: "serve Envoy SDS bundles as trusted_ca, not for Envoy's SPIFFE validator (the all-bundles name is then not served), unless an Envoy's node metadata holds disable_spiffe_cert_validation: false", EnvVars: []string{"WRIT_SDS_DISABLE_SPIFFE_CERT_VALIDATION"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-format", Value: "text", Usage: "log format: text or json", EnvVars: []string{"WRIT_LOG_FORMAT"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-level", Value: "info", Usage: "log level: debug, info, warn or error", EnvVars: []string{"WRIT_LOG_LEVEL"}}),
	}
	flags = append(flags, agentNodeAttestFlags()...)
	flags = append(flags, observeFlags("WRIT_AGENT_")...)
	return &cli.Command{
		Name:   "run",
		Usage:  "run the node agent until SIGINT or SIGTERM",
		Flags:  flags,
		Before: loadConfigFile(flags),
		Action: agentRun,
	}
}

func agentRun(c *cli.Context) error {
	if c.Args().Present() {
		return usagef(c, "unexpected argument %q", c.Args().First())
	}
	logger, err := newLogger(c.App.ErrWriter, c.String("log-format"), c.String("log-level"))
	if err != nil {
		return usagef(c, "%v", err)
	}
	if err := nodump.Disable(); err != nil {
		logger.Warn("private keys could reach a core file", "err", err)
	}
	tdName := c.String("trust-domain")
	if tdName == "" {
		return usagef(c, "--trust-domain is required")
	}
	td, err := spiffeid.TrustDomainFromString(tdName)
	if err != nil || td.Name() != tdName {
		return usagef(c, "--trust-domain %q is not a valid trust domain name (lowercase letters, digits, '.', '-', '_'; no scheme or port)", tdName)
	}
	if c.String("trust-bundle") != "" && c.Bool("insecure-bootstrap") {
		return usagef(c, "--trust-bundle and --insecure-bootstrap exclude each other")
	}
	dataDir := c.String("data-dir")
	socket := c.String("socket-path")
	if socket == "" {
		return usagef(c, "--socket-path must not be empty")
	}
	if abs, err := filepath.Abs(dataDir); err == nil {
		if err := unixsock.CheckPath(filepath.Join(abs, agent.AdminSocketName)); err != nil {
			return usagef(c, "--data-dir: %v", err)
		}
	}
	if abs, err := filepath.Abs(socket); err == nil {
		if err := unixsock.CheckPath(abs); err != nil {
			return usagef(c, "--socket-path: %v", err)
		}
		if absData, err := filepath.Abs(dataDir); err == nil {
			if rel, err := filepath.Rel(absData, abs); err == nil && !strings.HasPrefix(rel, "..") {
				return usagef(c, "--socket-path %s is inside the data dir %s, which only the agent's user may enter; put the socket where workloads can reach it (default %s)", socket, dataDir, defaultWorkloadSocket)
			}
		}
	}
	perUID := c.Int("workload-max-connections-per-uid")
	if perUID < 1 || perUID > workloadapi.DefaultMaxConnections {
		return usagef(c, "--workload-max-connections-per-uid %d must be between 1 and %d (the bound on all connections)", perUID, workloadapi.DefaultMaxConnections)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		ctx, cancel := context.WithCancel(c.Context)
		done := make(chan struct{})
		go func() {
			defer close(done)
			// The configuration is constant and valid: Run only returns
			// when ctx ends.
			_ = memlimit.Run(ctx, memlimit.Config{Floor: agentMemoryLimit, Headroom: agentMemoryHeadroom})
		}()
		defer func() {
			cancel()
			<-done
		}()
	}
	if err := checkObserveFlags(c); err != nil {
		return err
	}
	m, metricsHandler := agentMetrics(c)
	nodeAttestor, err := agentNodeAttestor(c)
	if err != nil {
		return usagef(c, "%v", err)
	}
	p, err := agentproc.New(agentproc.Config{
		Agent: agent.Config{
			NodeAttestor:      nodeAttestor,
			Metrics:           m,
			MetricsAddress:    c.String("metrics-address"),
			MetricsHandler:    metricsHandler,
			HealthAddress:     c.String("health-address"),
			ServerAddresses:   splitList(c.StringSlice("server-address")),
			TrustDomain:       td,
			DataDir:           dataDir,
			SocketPath:        socket,
			JoinToken:         c.String("join-token"),
			TrustBundlePath:   c.String("trust-bundle"),
			InsecureBootstrap: c.Bool("insecure-bootstrap"),
			MaxX509SVIDs:      c.Int("svid-cache-size"),
		},
		MaxConnectionsPerUID: perUID,
		SDS: sdsv3.Config{
			DefaultSVIDName:             c.String("sds-default-svid-name"),
			DefaultBundleName:           c.String("sds-default-bundle-name"),
			DefaultAllBundlesName:       c.String("sds-default-all-bundles-name"),
			DisableSPIFFECertValidation: c.Bool("sds-disable-spiffe-cert-validation"),
		},
		Logger: logger,
	})
	if err != nil {
		if errors.Is(err, agent.ErrConfig) || errors.Is(err, workloadapi.ErrConfig) || errors.Is(err, workloadapi.ErrSocketPath) {
			return usagef(c, "%v", err)
		}
		return err
	}
	// The agent and its Workload API run together: whichever stops first
	// stops the other.
	return p.Run(c.Context)
}

func agentHealthcheckCommand() *cli.Command {
	return &cli.Command{
		Name:  "healthcheck",
		Usage: "exit 0 if the agent holds a valid agent SVID, 1 otherwise",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "data-dir", Value: defaultAgentDataDir, EnvVars: []string{"WRIT_AGENT_DATA_DIR"}, Usage: "the agent's data dir (to find its admin socket)"},
			&cli.StringFlag{Name: "admin-socket", EnvVars: []string{"WRIT_AGENT_ADMIN_SOCKET"}, Usage: "path of the agent's admin socket (default: " + agent.AdminSocketName + " in the data dir)"},
			&cli.DurationFlag{Name: "timeout", Value: 3 * time.Second, Usage: "how long to wait for an answer"},
		},
		Action: agentHealthcheck,
	}
}

func agentHealthcheck(c *cli.Context) error {
	socket := c.String("admin-socket")
	if socket == "" {
		socket = filepath.Join(c.String("data-dir"), agent.AdminSocketName)
	}
	if err := checkHealth(c.Context, "agent", socket, c.Duration("timeout")); err != nil {
		if errors.Is(err, errNotServing) {
			return fmt.Errorf("agent is not healthy: %w: it has no valid agent SVID, or the server refused it", err)
		}
		return fmt.Errorf("agent is not healthy: %w", err)
	}
	fmt.Fprintln(c.App.Writer, "agent is serving")
	return nil
}
