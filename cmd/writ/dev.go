package main

// `writ dev`: a CA server, an agent and its Workload API in one process,
// on local state, with an identity for the user who runs it.
//
//	writ dev [--data-dir writ-dev-data] [--trust-domain example.org] [--socket-path PATH]
//
// Layout of the data directory (0700, locked while `writ dev` runs):
//
//	<data-dir>/server/             the CA server's state and admin.sock
//	<data-dir>/agent/              the agent's SVID, key and bundle
//	<data-dir>/bootstrap-bundle.pem  the CA certificates the agent attests against
//
// The Workload API socket is outside it (default
// /tmp/writ-dev-<uid>/public/api.sock), where workloads can reach it.
//
// On the first start the server creates the CA; `writ dev` generates a
// join token for the agent (spiffe://<td>/writ/agent/dev), which attests with
// it, and registers spiffe://<td>/dev/<user> for this uid under that
// agent (through the admin API, so that the same checks apply as for
// `writ entry create`). Later starts reuse the CA and the agent's saved
// identity (a new token only if it expired) and find the entry there.
// `writ dev` prints "ready" once the agent serves this user's SVID on the
// socket.

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"writ.dev/writ/agent"
	"writ.dev/writ/agent/agentproc"
	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/server"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/datadir"
	"writ.dev/writ/internal/logkey"
	"writ.dev/writ/internal/nodump"
	"writ.dev/writ/workloadapi"
)

const (
	defaultDevDataDir     = "writ-dev-data"
	defaultDevTrustDomain = "example.org"
	// devServerDir and devAgentDir are the server's and agent's data
	// directories inside --data-dir.
	devServerDir = "server"
	devAgentDir  = "agent"
	// devBundleFile holds the server's CA certificates, which
	// authenticate the server when the agent attests.
	devBundleFile = "bootstrap-bundle.pem"
	// devAgentPath is the path of the dev agent's SPIFFE ID; the user's
	// entry is /dev/<user>.
	devAgentPath = entry.AgentPathPrefix + "dev"
	// devJoinTokenTTL is the lifetime of the join token `writ dev` makes
	// for its own agent, which redeems it at once.
	devJoinTokenTTL = 5 * time.Minute
	// devStartTimeout bounds each start-up step: the server serving, the
	// user's SVID on the socket.
	devStartTimeout = 60 * time.Second
	// devRenewMargin: an agent SVID expiring sooner than this is treated
	// as expired, and the agent attests again.
	devRenewMargin = time.Minute
)

// defaultDevSocket is the default Workload API socket of `writ dev`:
// short (sun_path), outside the 0700 data directory, per user.
func defaultDevSocket() string {
	return fmt.Sprintf("/tmp/writ-dev-%d/public/api.sock", os.Geteuid())
}

func devCommand() *cli.Command {
	return &cli.Command{
		Name:  "dev",
		Usage: "run a CA server and an agent for local development, with an identity for you",
		Description: "Starts, in one process, a CA server and an agent on local state in --data-dir\n" +
			"(created on the first run, reused afterwards), registers spiffe://<trust domain>/dev/<user>\n" +
			"for your uid, and serves it on the Workload API socket. It prints the socket and the\n" +
			"commands to try once your SVID is served. Ctrl-C stops it.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "data-dir", Value: defaultDevDataDir, Usage: "`DIR` of the server's and agent's state (created 0700)", EnvVars: []string{"WRIT_DEV_DATA_DIR"}, TakesFile: true},
			&cli.StringFlag{Name: "trust-domain", Value: defaultDevTrustDomain, Usage: "the trust domain of the development CA"},
			&cli.StringFlag{Name: "socket-path", Usage: "`PATH` of the Workload API socket, outside the data dir", DefaultText: "/tmp/writ-dev-<uid>/public/api.sock", TakesFile: true},
			&cli.StringFlag{Name: "log-format", Value: "text", Usage: "log format: text or json"},
			&cli.StringFlag{Name: "log-level", Value: "warn", Usage: "log level: debug, info, warn or error"},
			&cli.StringFlag{Name: "oauth-bind-address", Usage: "host:port of the server's OAuth 2.0 endpoints (off when empty; see writ server run)"},
			&cli.StringFlag{Name: "oauth-issuer", Usage: "https origin of the OAuth endpoints (default: https://<oauth bind address>)"},
			&cli.StringFlag{Name: "oauth-cert", Usage: "PEM `FILE` of the OAuth endpoints' certificate chain (default: the server's own X.509-SVID)", TakesFile: true},
			&cli.StringFlag{Name: "oauth-key", Usage: "PEM `FILE` of the OAuth endpoints' private key", TakesFile: true},
		},
		Action: devRun,
	}
}

// devEnv is what `writ dev` runs with, checked.
type devEnv struct {
	td          spiffeid.TrustDomain
	dataDir     string // absolute
	serverDir   string
	agentDir    string
	adminSocket string
	socket      string // absolute
	agentID     spiffeid.ID
	userID      spiffeid.ID
	uid         int
	log         *slog.Logger
	oauth       server.OAuthConfig
}

func devRun(c *cli.Context) error {
	if c.Args().Present() {
		return usagef(c, "unexpected argument %q", c.Args().First())
	}
	env, err := newDevEnv(c)
	if err != nil {
		return err
	}
	if err := nodump.Disable(); err != nil {
		env.log.Warn("private keys could reach a core file", "err", err)
	}
	dir, err := datadir.Open(env.dataDir)
	if err != nil {
		if errors.Is(err, datadir.ErrInUse) {
			return fmt.Errorf("another `writ dev` is running on this data dir: %w", err)
		}
		return err
	}
	defer dir.Close()
	// Fail before starting anything if another agent serves the socket.
	if conn, err := net.DialTimeout("unix", env.socket, time.Second); err == nil {
		conn.Close()
		return fmt.Errorf("the Workload API socket %s is in use by another process (another `writ dev` or agent?); stop it or choose another --socket-path", env.socket)
	}
	return env.run(c.Context, c.App.Writer)
}

func newDevEnv(c *cli.Context) (*devEnv, error) {
	log, err := newLogger(c.App.ErrWriter, c.String("log-format"), c.String("log-level"))
	if err != nil {
		return nil, usagef(c, "%v", err)
	}
	tdName := c.String("trust-domain")
	td, err := spiffeid.TrustDomainFromString(tdName)
	if err != nil || td.Name() != tdName {
		return nil, usagef(c, "--trust-domain %q is not a valid trust domain name (lowercase letters, digits, '.', '-', '_'; no scheme or port)", tdName)
	}
	if c.String("data-dir") == "" {
		return nil, usagef(c, "--data-dir must not be empty")
	}
	dataDir, err := filepath.Abs(c.String("data-dir"))
	if err != nil {
		return nil, err
	}
	socket := c.String("socket-path")
	if !c.IsSet("socket-path") {
		socket = defaultDevSocket()
	}
	if socket == "" {
		return nil, usagef(c, "--socket-path must not be empty")
	}
	if socket, err = filepath.Abs(socket); err != nil {
		return nil, err
	}
	if rel, err := filepath.Rel(dataDir, socket); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
		return nil, usagef(c, "--socket-path %s is inside the data dir %s, which only you may enter; put the socket where workloads can reach it", socket, dataDir)
	}
	if err := workloadapi.CheckSocketPath(socket); err != nil {
		return nil, usagef(c, "--socket-path: %v", err)
	}
	env := &devEnv{
		oauth:       server.OAuthConfig{BindAddress: c.String("oauth-bind-address"), Issuer: c.String("oauth-issuer"), CertFile: c.String("oauth-cert"), KeyFile: c.String("oauth-key")},
		td:          td,
		dataDir:     dataDir,
		serverDir:   filepath.Join(dataDir, devServerDir),
		agentDir:    filepath.Join(dataDir, devAgentDir),
		adminSocket: filepath.Join(dataDir, devServerDir, server.AdminSocket),
		socket:      socket,
		agentID:     spiffeid.RequireFromPath(td, devAgentPath),
		uid:         os.Geteuid(),
		log:         log,
	}
	for _, p := range []string{env.adminSocket, filepath.Join(env.agentDir, agent.AdminSocketName)} {
		if len(p) > 100 {
			return nil, usagef(c, "--data-dir %s is too deep: the socket %s would be %d bytes, more than a Unix socket address holds (100 here); choose a shorter path", dataDir, p, len(p))
		}
	}
	env.userID, err = spiffeid.FromPath(td, "/dev/"+devUserSegment(currentUserName(), env.uid))
	if err != nil {
		return nil, err
	}
	return env, nil
}

// currentUserName returns the login name of this process's user, or ""
// if it has none (a uid without a passwd entry, as in some containers).
func currentUserName() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return ""
}

// devUserSegment is the last path segment of the user's SPIFFE ID: the
// login name when it is a valid SPIFFE ID path segment (and not "agent",
// the dev agent's), else "uid-<uid>". cmd/examples/internal/greet
// derives the examples' default IDs by the same rule.
func devUserSegment(name string, uid int) string {
	if name == "" || name == "agent" || spiffeid.ValidatePathSegment(name) != nil {
		return "uid-" + strconv.Itoa(uid)
	}
	return name
}

// run starts the server, the agent and the Workload API, registers the
// user's entry, reports when the user's SVID is served, and runs until
// ctx ends or a part fails; it returns after everything has stopped.
func (env *devEnv) run(ctx context.Context, out io.Writer) error {
	g := newDevGroup(ctx)
	defer g.wait()

	// 1. The CA server, on a free loopback port.
	addr, err := freeLoopbackAddr()
	if err != nil {
		return err
	}
	srv, err := server.New(server.Config{
		TrustDomain: env.td,
		DataDir:     env.serverDir,
		BindAddress: addr,
		Logger:      env.log.With("component", "server"),
		OAuth:       env.oauth,
	})
	if err != nil {
		return err
	}
	g.run(func(ctx context.Context) error { return prefixErr("server", srv.Run(ctx)) })
	admin, err := dialAdmin(env.adminSocket, 10*time.Second)
	if err != nil {
		return g.stop(err)
	}
	defer admin.Close()
	if err := env.waitServing(g, admin); err != nil {
		return g.stop(err)
	}

	// 2. What the agent needs: the CA certificates, a join token if it has
	// no valid identity, and the user's entry.
	bundle, err := env.bundle(g.ctx, admin)
	if err != nil {
		return g.stop(err)
	}
	bundlePath := filepath.Join(env.dataDir, devBundleFile)
	if err := datadir.WriteFile(bundlePath, pemCerts(bundle.X509Authorities())); err != nil {
		return g.stop(err)
	}
	token, err := env.joinToken(g.ctx, admin, bundle)
	if err != nil {
		return g.stop(err)
	}
	if err := env.registerUser(g.ctx, admin); err != nil {
		return g.stop(err)
	}

	// 3. The agent and its Workload API.
	p, err := agentproc.New(agentproc.Config{
		Agent: agent.Config{
			ServerAddress:   addr,
			TrustDomain:     env.td,
			DataDir:         env.agentDir,
			SocketPath:      env.socket,
			JoinToken:       token,
			TrustBundlePath: bundlePath,
		},
		Logger: env.log,
	})
	if err != nil {
		return g.stop(err)
	}
	g.run(p.Run) // its errors say "agent: ..." or "Workload API: ..."

	// 4. Ready once this user's SVID is served on the socket.
	if err := env.waitSVID(g); err != nil {
		return g.stop(err)
	}
	env.printReady(out)

	<-g.stopped // ctx ended, or a part stopped
	err = g.wait()
	fmt.Fprintln(out, "writ dev stopped")
	return err
}

// devGroup runs the parts of `writ dev`: when one returns, all stop.
type devGroup struct {
	parent  context.Context
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	stopped chan struct{} // closed when ctx ends or the first part returns
	once    sync.Once

	mu  sync.Mutex // guards err
	err error      // the first error a part returned
}

func newDevGroup(parent context.Context) *devGroup {
	ctx, cancel := context.WithCancel(parent)
	g := &devGroup{parent: parent, ctx: ctx, cancel: cancel, stopped: make(chan struct{})}
	context.AfterFunc(ctx, func() { g.once.Do(func() { close(g.stopped) }) })
	return g
}

// run runs f in a goroutine; its return stops the group.
func (g *devGroup) run(f func(context.Context) error) {
	g.wg.Go(func() {
		err := f(g.ctx)
		g.mu.Lock()
		if g.err == nil && err != nil {
			g.err = err
		}
		g.mu.Unlock()
		g.cancel()
	})
}

// firstErr returns the first error a part returned.
func (g *devGroup) firstErr() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

// wait stops every part and returns the first error one returned.
func (g *devGroup) wait() error {
	g.cancel()
	g.wg.Wait()
	return g.firstErr()
}

// stop stops every part and returns err, or the error that stopped a part
// (which explains err better, such as a server that failed to start), or
// nil if start-up was interrupted (Ctrl-C).
func (g *devGroup) stop(err error) error {
	if first := g.wait(); first != nil {
		return first
	}
	if g.parent.Err() != nil {
		return nil
	}
	return err
}

// startFailed returns the error of a part that stopped during start-up.
func (g *devGroup) startFailed() error {
	if err := g.firstErr(); err != nil {
		return err
	}
	return errors.New("stopped during start-up")
}

func prefixErr(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}

// freeLoopbackAddr returns a loopback address with a port free now.
func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port for the server: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// waitServing waits until the server answers its health check as
// serving, it fails, or devStartTimeout passes.
func (env *devEnv) waitServing(g *devGroup, admin *adminClient) error {
	ctx, cancel := context.WithTimeout(g.ctx, devStartTimeout)
	defer cancel()
	// Until the socket exists, calls would only fail and make gRPC back
	// off before trying again.
	for {
		if fi, err := os.Lstat(env.adminSocket); err == nil && fi.Mode().Type() == fs.ModeSocket {
			break
		}
		select {
		case <-g.stopped:
			return g.startFailed()
		case <-ctx.Done():
			return fmt.Errorf("the server did not start within %s", devStartTimeout)
		case <-time.After(20 * time.Millisecond):
		}
	}
	health := healthpb.NewHealthClient(admin.conn)
	for {
		callCtx, callCancel := context.WithTimeout(ctx, time.Second)
		resp, err := health.Check(callCtx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		callCancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		select {
		case <-g.stopped:
			return g.startFailed()
		case <-ctx.Done():
			return fmt.Errorf("the server did not start within %s", devStartTimeout)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// bundle fetches the trust domain's bundle from the admin API.
func (env *devEnv) bundle(ctx context.Context, admin *adminClient) (*spiffebundle.Bundle, error) {
	callCtx, cancel := admin.callContext(ctx)
	defer cancel()
	resp, err := admin.bundles.GetBundle(callCtx, &adminv1.GetBundleRequest{})
	if err != nil {
		return nil, fmt.Errorf("get the bundle: %w", admin.callError(err))
	}
	b, err := spiffebundle.Parse(env.td, resp.GetSpiffeBundle())
	if err != nil {
		return nil, fmt.Errorf("the server sent an invalid bundle: %w", err)
	}
	if len(b.X509Authorities()) == 0 {
		return nil, errors.New("the server's bundle has no X.509 authorities")
	}
	return b, nil
}

// joinToken returns "" if the agent holds an identity from this CA valid
// for a while longer, and a new join token if it holds none or an expired
// one. An identity from another CA (the server's state was reset without
// the agent's) is an error: the agent could not authenticate the server.
func (env *devEnv) joinToken(ctx context.Context, admin *adminClient, bundle *spiffebundle.Bundle) (string, error) {
	chain, err := agent.SavedSVID(env.agentDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		env.log.Info("first start of the agent: attesting with a join token", logkey.SPIFFEID, env.agentID.String())
	case err != nil:
		return "", err
	default:
		now := time.Now()
		if id, ok := svidID(chain[0]); !ok || id != env.agentID {
			// The agent of an earlier writ dev, whose ID was outside
			// /writ/agent/: drop its identity so that it attests again.
			env.log.Info("the agent's saved identity is not its current ID: attesting again with a join token", logkey.SPIFFEID, env.agentID.String())
			for _, f := range []string{agent.StateFile, "agent_svid.pem", "agent_key.pem"} {
				if err := os.Remove(filepath.Join(env.agentDir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return "", err
				}
			}
			break
		}
		if now.Add(devRenewMargin).Before(chain[0].NotAfter) {
			if _, verr := x509ca.VerifyX509SVID(chain, bundle.X509Authorities(), now); verr != nil {
				return "", fmt.Errorf("the agent's identity in %s was not issued by this CA (was %s reset?): %v; remove %s to attest the agent again", env.agentDir, env.serverDir, verr, env.agentDir)
			}
			return "", nil // the agent resumes with its saved identity
		}
		env.log.Info("the agent's identity has expired: attesting again with a join token", logkey.SPIFFEID, env.agentID.String(), "not_after", chain[0].NotAfter)
	}
	callCtx, cancel := admin.callContext(ctx)
	defer cancel()
	resp, err := admin.tokens.GenerateJoinToken(callCtx, &adminv1.GenerateJoinTokenRequest{
		SpiffeId: env.agentID.String(),
		Ttl:      int64(devJoinTokenTTL / time.Second),
	})
	if err != nil {
		return "", fmt.Errorf("generate a join token for the agent: %w", admin.callError(err))
	}
	return resp.GetToken(), nil
}

// registerUser creates the user's entry; one left by an earlier run is
// fine (AlreadyExists).
func (env *devEnv) registerUser(ctx context.Context, admin *adminClient) error {
	callCtx, cancel := admin.callContext(ctx)
	defer cancel()
	resp, err := admin.entries.BatchCreateEntry(callCtx, &adminv1.BatchCreateEntryRequest{Entries: []*adminv1.Entry{{
		SpiffeId:  env.userID.String(),
		ParentId:  env.agentID.String(),
		Selectors: []string{"unix:uid:" + strconv.Itoa(env.uid)},
	}}})
	if err != nil {
		return fmt.Errorf("register %s: %w", env.userID, admin.callError(err))
	}
	if len(resp.GetResults()) != 1 {
		return fmt.Errorf("register %s: the server returned %d results for 1 entry", env.userID, len(resp.GetResults()))
	}
	switch st := resp.GetResults()[0].GetStatus(); codes.Code(st.GetCode()) {
	case codes.OK:
		env.log.Info("registered the user's entry", logkey.SPIFFEID, env.userID.String(), logkey.UID, env.uid)
	case codes.AlreadyExists:
		env.log.Debug("the user's entry exists", logkey.SPIFFEID, env.userID.String(), logkey.UID, env.uid)
	default:
		return fmt.Errorf("register %s: %s", env.userID, st.GetMessage())
	}
	return nil
}

// waitSVID waits until the Workload API serves this process the user's
// SVID: the proof that server, agent and socket all work.
func (env *devEnv) waitSVID(g *devGroup) error {
	ctx, cancel := context.WithTimeout(g.ctx, devStartTimeout)
	defer cancel()
	addr, err := workloadapi.EndpointAddr(env.socket)
	if err != nil {
		return err
	}
	var last error
	for {
		callCtx, callCancel := context.WithTimeout(ctx, 2*time.Second)
		svids, err := spiffewl.FetchX509SVIDs(callCtx, spiffewl.WithAddr(addr))
		callCancel()
		if err == nil && slices.ContainsFunc(svids, func(s *x509svid.SVID) bool { return s.ID == env.userID }) {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-g.stopped:
			return g.startFailed()
		case <-ctx.Done():
			return fmt.Errorf("the agent did not serve %s on %s within %s (last error: %v)", env.userID, env.socket, devStartTimeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (env *devEnv) printReady(out io.Writer) {
	addr, _ := workloadapi.EndpointAddr(env.socket)
	p := entry.Printable
	fmt.Fprintf(out, `writ dev is ready: a CA server and an agent for trust domain %s, state in %s.

  Your identity:        %s (uid %d)
  Workload API socket:  %s
  Admin socket:         %s

In another terminal, from the repository:

  export SPIFFE_ENDPOINT_SOCKET=%s
  export WRIT_ADMIN_SOCKET=%s
  go run ./cmd/writ svid fetch                   # your X.509-SVID
  go run ./cmd/examples/greeter-server &         # an mTLS and a JWT-SVID endpoint
  go run ./cmd/examples/greeter-client           # calls both

Ctrl-C stops writ dev; running it again resumes with the same CA and entries.
`, env.td.Name(), p(env.dataDir), env.userID, env.uid, p(env.socket), p(env.adminSocket), p(addr), p(env.adminSocket))
}

// svidID returns the SPIFFE ID in cert's URI SAN, if it has exactly one.
func svidID(cert *x509.Certificate) (spiffeid.ID, bool) {
	if len(cert.URIs) != 1 {
		return spiffeid.ID{}, false
	}
	id, err := spiffeid.FromURI(cert.URIs[0])
	return id, err == nil
}
