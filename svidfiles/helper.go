package svidfiles

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"writ.dev/writ/ca/clock"
	"writ.dev/writ/internal/unixsock"
	"writ.dev/writ/workloadapi"
)

const (
	// jwtRetry is how long to wait before fetching a JWT-SVID again after
	// a failure.
	jwtRetry = 5 * time.Second
	// cmdStopGrace is how long the command gets to exit after SIGTERM
	// when the helper stops.
	cmdStopGrace = 10 * time.Second
	// fetchTimeout bounds the one fetch of --daemon-mode=false.
	fetchTimeout = time.Minute
)

// ErrCmdExited: the command the helper runs exited.
var ErrCmdExited = errors.New("svidfiles: the command exited")

// Helper writes a workload's SVIDs and bundles to files and keeps them
// up to date.
type Helper struct {
	cfg    Config
	addr   string
	path   string // the socket's absolute path
	sig    syscall.Signal
	args   []string
	clk    clock.Clock
	log    *slog.Logger
	client *spiffewl.Client
	cmd    *exec.Cmd     // the running command, nil if none
	cmdErr chan error    // its exit
	jwtDue time.Time     // when the JWT-SVID files are fetched again; zero if none
	ready  chan struct{} // closed after the first write
}

// New checks cfg and returns a Helper. clk may be nil (the system
// clock), and log too (discard).
func New(cfg Config, clk clock.Clock, log *slog.Logger) (*Helper, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	h := &Helper{cfg: cfg, clk: clk, log: log, ready: make(chan struct{})}
	if h.clk == nil {
		h.clk = clock.Real()
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.cfg.Log == nil {
		h.cfg.Log = h.log
	}
	if cfg.RenewSignal != "" {
		h.sig, _ = ParseSignal(cfg.RenewSignal) // checked
	}
	h.args, _ = splitArgs(cfg.CmdArgs) // checked
	addr := cfg.SocketPath
	if !strings.HasPrefix(addr, "unix:") {
		abs, err := filepath.Abs(addr)
		if err != nil {
			return nil, fmt.Errorf("%w: socket path: %v", ErrConfig, err)
		}
		if addr, err = workloadapi.EndpointAddr(abs); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrConfig, err)
		}
		h.path = abs
	} else {
		p, err := workloadapi.ParseEndpointAddr(addr)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrConfig, err)
		}
		h.path = p
	}
	h.addr = addr
	if fi, err := os.Stat(cfg.CertDir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("%w: the certificate directory %s must exist", ErrConfig, cfg.CertDir)
	}
	return h, nil
}

// Ready is closed once the files have been written the first time.
func (h *Helper) Ready() <-chan struct{} { return h.ready }

// Run writes the files and, in daemon mode, keeps them up to date until
// ctx ends (returning nil) or the command exits (ErrCmdExited). Without
// daemon mode it writes them once and returns.
func (h *Helper) Run(ctx context.Context) error {
	opts := []spiffewl.ClientOption{spiffewl.WithAddr(h.addr)}
	if h.cfg.CheckSocket {
		// A socket that is not there yet (the agent is starting) is
		// checked when it is dialed; one there already, now.
		if err := h.checkSocket(); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		opts = append(opts, spiffewl.WithDialOptions(grpc.WithContextDialer(h.dialChecked)))
	}
	client, err := spiffewl.New(ctx, opts...)
	if err != nil {
		return fmt.Errorf("svidfiles: Workload API client: %w", err)
	}
	defer client.Close()
	h.client = client
	if !h.cfg.DaemonMode {
		return h.once(ctx)
	}
	return h.daemon(ctx)
}

// checkSocket reports an error unless only this user or root can have
// made the socket at h.path.
func (h *Helper) checkSocket() error {
	if err := unixsock.CheckDial(h.path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("svidfiles: Workload API socket %s: %w", h.path, err)
		}
		return fmt.Errorf("svidfiles: refusing the default Workload API socket %s, which another user may have made: %w; if it is your agent's, name it in agent_address, --socket-path or $%s", h.path, err, spiffewl.SocketEnv)
	}
	return nil
}

// dialChecked connects to h.path after checkSocket accepts it. Once
// accepted, only this user or root can change what the path names.
func (h *Helper) dialChecked(ctx context.Context, _ string) (net.Conn, error) {
	if err := h.checkSocket(); err != nil {
		return nil, err // in the failed call's status, which is logged
	}
	var d net.Dialer
	return d.DialContext(ctx, "unix", h.path)
}

func (h *Helper) once(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	x, err := h.client.FetchX509Context(ctx)
	if err != nil {
		return fmt.Errorf("svidfiles: fetch the X.509-SVID: %w", err)
	}
	// Once the set has switched, the consumer is told even if cleaning
	// up after it failed: it must not keep the old certificate.
	changed, err := h.writeX509(x)
	if err != nil && !changed {
		return err
	}
	if _, jerr := h.writeJWTBundle(ctx); jerr != nil {
		err = errors.Join(err, jerr)
	} else if jerr = h.writeJWTSVIDs(ctx); jerr != nil {
		err = errors.Join(err, jerr)
	}
	if err != nil && !changed {
		return err
	}
	close(h.ready)
	h.notify()
	return err
}

// watcher passes X.509 contexts to the helper's loop, the latest only.
type watcher struct {
	updates chan *spiffewl.X509Context
	log     *slog.Logger
}

func (w watcher) OnX509ContextUpdate(x *spiffewl.X509Context) {
	for {
		select {
		case w.updates <- x:
			return
		default:
		}
		select {
		case <-w.updates: // drop the older one
		default:
		}
	}
}

func (w watcher) OnX509ContextWatchError(err error) {
	if status.Code(err) != codes.Canceled {
		w.log.Warn("Workload API watch failed; retrying", "err", err)
	}
}

func (h *Helper) daemon(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := watcher{updates: make(chan *spiffewl.X509Context, 1), log: h.log}
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		_ = h.client.WatchX509Context(ctx, w)
	}()
	defer func() { cancel(); <-watchDone }()
	defer h.stopCmd()

	jwtTimer := h.clk.NewTimer(time.Hour)
	jwtTimer.Stop()
	defer jwtTimer.Stop()
	first := true
	for {
		var cmdErr <-chan error
		if h.cmd != nil {
			cmdErr = h.cmdErr
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-cmdErr:
			h.cmd = nil
			return fmt.Errorf("%w: %v", ErrCmdExited, err)
		case x := <-w.updates:
			changed, err := h.writeX509(x)
			if err != nil && !changed {
				h.log.Error("cannot write the X.509-SVID files; retrying on the next update", "err", err)
				continue
			}
			if err != nil {
				// The new set is in place: signal all the same.
				h.log.Error("the X.509-SVID files are written, but cleaning up after them failed", "err", err)
			}
			if jc, err := h.writeJWTBundle(ctx); err != nil {
				h.log.Error("cannot write the JWT bundle file", "err", err)
			} else if jc {
				changed = true
			}
			if first {
				if err := h.writeJWTSVIDs(ctx); err != nil {
					h.log.Error("cannot write the JWT-SVID files", "err", err)
				}
				first = false
				close(h.ready)
				if h.cfg.Cmd != "" {
					if err := h.startCmd(); err != nil {
						return err
					}
				} else {
					h.notify()
				}
			} else if changed {
				h.notify()
			}
		case <-jwtTimer.C():
			if err := h.writeJWTSVIDs(ctx); err != nil && ctx.Err() == nil {
				h.log.Warn("cannot refresh the JWT-SVID files; retrying", "err", err, "retry_in", jwtRetry)
			} else if err == nil {
				h.notify()
			}
		}
		if !h.jwtDue.IsZero() {
			jwtTimer.Reset(max(h.jwtDue.Sub(h.clk.Now()), 0))
		}
	}
}

// writeX509 writes the default SVID's files; it reports whether any
// changed.
func (h *Helper) writeX509(x *spiffewl.X509Context) (bool, error) {
	svid := x.DefaultSVID()
	changed, err := h.cfg.WriteX509Files(svid, x.Bundles)
	if changed {
		h.log.Info("X.509-SVID files written", "spiffe_id", svid.ID.String(), "not_after", svid.Certificates[0].NotAfter, "dir", h.cfg.CertDir)
	}
	return changed, err
}

// writeJWTBundle writes the JWT bundle of the SVID's trust domain as a
// JWKS, if asked to.
func (h *Helper) writeJWTBundle(ctx context.Context) (bool, error) {
	if h.cfg.JWTBundleFileName == "" {
		return false, nil
	}
	set, err := h.client.FetchJWTBundles(ctx)
	if err != nil {
		return false, fmt.Errorf("fetch the JWT bundles: %w", err)
	}
	bundles := set.Bundles()
	if len(bundles) == 0 {
		return false, errors.New("no JWT bundle")
	}
	// One trust domain: a JWKS, as validators read it. Several: a map of
	// trust domain names to JWKS.
	var data []byte
	if len(bundles) == 1 {
		data, err = bundles[0].Marshal()
	} else {
		m := make(map[string]json.RawMessage, len(bundles))
		for _, b := range bundles {
			raw, merr := b.Marshal()
			if merr != nil {
				return false, merr
			}
			m[b.TrustDomain().Name()] = raw
		}
		data, err = json.Marshal(m)
	}
	if err != nil {
		return false, fmt.Errorf("encode the JWT bundle: %w", err)
	}
	return writeFiles(h.cfg.CertDir, []file{{name: h.cfg.JWTBundleFileName, data: data, mode: h.cfg.JWTBundleFileMode}})
}

// writeJWTSVIDs fetches and writes every JWT-SVID file, and sets when to
// do it again: at half the shortest remaining lifetime, or jwtRetry
// after a failure.
func (h *Helper) writeJWTSVIDs(ctx context.Context) error {
	if len(h.cfg.JWTSVIDs) == 0 {
		return nil
	}
	now := h.clk.Now()
	due := time.Time{}
	for _, j := range h.cfg.JWTSVIDs {
		svid, err := h.client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: j.Audience, ExtraAudiences: j.ExtraAudiences})
		if err != nil {
			h.jwtDue = now.Add(jwtRetry)
			return fmt.Errorf("fetch a JWT-SVID for audience %q: %w", j.Audience, err)
		}
		if _, err := writeFiles(h.cfg.CertDir, []file{{name: j.FileName, data: []byte(svid.Marshal()), mode: h.cfg.JWTSVIDFileMode}}); err != nil {
			h.jwtDue = now.Add(jwtRetry)
			return err
		}
		next := now.Add(svid.Expiry.Sub(now) / 2)
		if due.IsZero() || next.Before(due) {
			due = next
		}
	}
	h.log.Info("JWT-SVID files written", "files", len(h.cfg.JWTSVIDs), "refresh_at", due)
	h.jwtDue = due
	return nil
}

// startCmd starts the command, which inherits the helper's standard
// streams.
func (h *Helper) startCmd() error {
	if h.sig != 0 && signal.Ignored(h.sig) {
		h.catchRenewSignal()
	}
	cmd := exec.Command(h.cfg.Cmd, h.args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("svidfiles: start %s: %w", h.cfg.Cmd, err)
	}
	h.cmd = cmd
	h.cmdErr = make(chan error, 1)
	go func() { h.cmdErr <- cmd.Wait() }()
	h.log.Info("command started", "cmd", h.cfg.Cmd, "pid", cmd.Process.Pid)
	return nil
}

// catchRenewSignal makes the helper catch the renew signal, which it
// was started ignoring (under nohup, for SIGHUP): a command inherits an
// ignored signal, and a shell cannot even trap one, so it would never
// see a rotation. A caught signal is reset to its default in the
// command; the helper drops those it receives itself, keeping the
// immunity it was started with. This holds until the process ends: the
// command may outlive one Run.
func (h *Helper) catchRenewSignal() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, h.sig)
	go func() {
		for range c {
			h.log.Debug("renew signal received by the helper; ignored, as it was at start", "signal", h.sig.String())
		}
	}()
	h.log.Info("the renew signal was ignored in this process; the command gets its default handling", "signal", h.sig.String())
}

// stopCmd stops a running command: SIGTERM, then SIGKILL after
// cmdStopGrace.
func (h *Helper) stopCmd() {
	if h.cmd == nil {
		return
	}
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	t := h.clk.NewTimer(cmdStopGrace)
	defer t.Stop()
	select {
	case <-h.cmdErr:
	case <-t.C():
		_ = h.cmd.Process.Kill()
		<-h.cmdErr
	}
	h.cmd = nil
}

// notify sends the renew signal to the command, or to the pid in the pid
// file; failures are logged (the process may not be up yet).
func (h *Helper) notify() {
	if h.sig == 0 {
		return
	}
	pid := 0
	switch {
	case h.cmd != nil:
		pid = h.cmd.Process.Pid
	case h.cfg.PIDFileName != "":
		b, err := os.ReadFile(h.cfg.PIDFileName)
		if err != nil {
			h.log.Warn("cannot read the pid file; no signal sent", "pid_file", h.cfg.PIDFileName, "err", err)
			return
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			h.log.Warn("the pid file holds no pid; no signal sent", "pid_file", h.cfg.PIDFileName)
			return
		}
	default:
		return
	}
	if err := syscall.Kill(pid, h.sig); err != nil {
		h.log.Warn("cannot signal the process", "pid", pid, "signal", h.sig.String(), "err", err)
		return
	}
	h.log.Info("process signalled", "pid", pid, "signal", h.sig.String())
}
