package main

import (
	"net/http"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"writ.dev/writ/internal/metrics"
	"writ.dev/writ/internal/probe"
)

// observeFlags are the --metrics-address and --health-address flags of a
// long-running command; envPrefix is WRIT_ or WRIT_AGENT_.
func observeFlags(envPrefix string) []cli.Flag {
	return []cli.Flag{
		altsrc.NewStringFlag(&cli.StringFlag{Name: "metrics-address", Usage: "host:port to serve Prometheus metrics on at /metrics over HTTP (a bare port means loopback; off if empty)", EnvVars: []string{envPrefix + "METRICS_ADDRESS"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "health-address", Usage: "host:port to serve /live and /ready on over HTTP (a bare port means loopback; off if empty; may equal --metrics-address)", EnvVars: []string{envPrefix + "HEALTH_ADDRESS"}}),
	}
}

// checkObserveFlags refuses a --metrics-address or --health-address that
// is neither host:port nor a port.
func checkObserveFlags(c *cli.Context) error {
	for _, name := range []string{"metrics-address", "health-address"} {
		if v := c.String(name); v != "" {
			if _, err := probe.ResolveAddress(v); err != nil {
				return usagef(c, "--%s: %v", name, err)
			}
		}
	}
	return nil
}

// serverMetrics returns the server's metrics and their handler, on a
// registry of this process's own, when --metrics-address is set.
func serverMetrics(c *cli.Context) (*metrics.Server, http.Handler) {
	if c.String("metrics-address") == "" {
		return nil, nil
	}
	reg := metrics.NewRegistry()
	return metrics.NewServer(reg), metrics.Handler(reg)
}

// agentMetrics returns the agent's metrics and their handler, on a
// registry of this process's own, when --metrics-address is set.
func agentMetrics(c *cli.Context) (*metrics.Agent, http.Handler) {
	if c.String("metrics-address") == "" {
		return nil, nil
	}
	reg := metrics.NewRegistry()
	return metrics.NewAgent(reg), metrics.Handler(reg)
}
