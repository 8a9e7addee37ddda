package agentproc

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"writ.dev/writ/agent"
	"writ.dev/writ/workloadapi"
	"writ.dev/writ/workloadapi/downstream"
	"writ.dev/writ/workloadapi/revocationapi"
	"writ.dev/writ/workloadapi/sdsv3"
	"writ.dev/writ/workloadapi/unixattest"
)

// sdsMaxRecvMsgSize bounds a request on the Workload API socket, which
// serves SDS too.
const sdsMaxRecvMsgSize = 1 << 20

// Config configures a Process.
type Config struct {
	// Agent configures the node agent. Its Logger and Clock, if nil, are
	// the Process's.
	Agent agent.Config
	// MaxConnectionsPerUID bounds the Workload API connections of one
	// uid; zero means workloadapi's default.
	MaxConnectionsPerUID int
	// SDS configures Envoy's secret discovery service on the Workload
	// API socket; its Socket, Cache and Logger are filled in.
	SDS sdsv3.Config
	// Logger receives the parts' logs, each with a "component"
	// attribute. Nil discards them.
	Logger *slog.Logger
}

// Process is the agent process: the agent and the services on its
// Workload API socket.
type Process struct {
	agent *agent.Agent
	wl    *workloadapi.Server
}

// New builds the parts of the agent process from cfg. It starts
// nothing: Run does. Errors wrap agent.ErrConfig or workloadapi.ErrConfig
// (or workloadapi.ErrSocketPath) for an invalid configuration.
func New(cfg Config) (*Process, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ac := cfg.Agent
	if ac.Logger == nil {
		ac.Logger = log.With("component", "agent")
	}
	a, err := agent.New(ac)
	if err != nil {
		return nil, err
	}
	wl, err := workloadapi.New(workloadapi.Config{
		SocketPath:  a.SocketPath(),
		Cache:       a.Cache(),
		Attestor:    unixattest.New(unixattest.Config{Logger: log.With("component", "unixattest")}),
		TrustDomain: ac.TrustDomain,
		Clock:       ac.Clock,
		Logger:      log.With("component", "workloadapi"),

		MaxConnectionsPerUID: cfg.MaxConnectionsPerUID,
		Metrics:              ac.Metrics,
		// Envoy's requests carry its node description, tens of KiB with
		// its list of extensions.
		MaxRecvMsgSize: sdsMaxRecvMsgSize,
		// ValidateJWTSVID refuses revoked tokens.
		Revocations: a.Revocations(),
		// Until the first entries arrive, a caller matching none is
		// told to retry, not that it has no identity.
		Synced: a.Ready(),
	})
	if err != nil {
		return nil, err
	}
	sc := cfg.SDS
	sc.Socket, sc.Cache, sc.Logger = wl, a.Cache(), log.With("component", "sds")
	sds, err := sdsv3.New(sc)
	if err != nil {
		return nil, err
	}
	sds.Register(wl.HeaderExempt()) // Envoy does not send the security header
	rev, err := revocationapi.NewService(revocationapi.ServiceConfig{Socket: wl, List: a.Revocations(), Logger: log.With("component", "revocations")})
	if err != nil {
		return nil, err
	}
	rev.Register(wl)
	ds, err := downstream.New(downstream.Config{Socket: wl, Cache: a.Cache(), Forwarder: a.Downstream(), Logger: log.With("component", "downstream")})
	if err != nil {
		return nil, err
	}
	ds.Register(wl)
	return &Process{agent: a, wl: wl}, nil
}

// Agent returns the node agent.
func (p *Process) Agent() *agent.Agent { return p.agent }

// WorkloadAPI returns the Workload API server.
func (p *Process) WorkloadAPI() *workloadapi.Server { return p.wl }

// Run runs every part until ctx ends or one of them stops, then stops
// the others and returns after all have stopped: nil if ctx ended and
// every part stopped cleanly, else the first error (the agent's say
// "agent: ...", the socket's "Workload API: ...").
func (p *Process) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex // guards first
		first error
	)
	run := func(f func(context.Context) error) {
		wg.Go(func() {
			err := f(ctx)
			mu.Lock()
			if first == nil && err != nil {
				first = err
			}
			mu.Unlock()
			cancel()
		})
	}
	run(p.agent.Run)
	run(func(ctx context.Context) error { return prefix("Workload API", p.wl.Run(ctx)) })
	wg.Wait()
	return first
}

func prefix(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}
