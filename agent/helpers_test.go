package agent_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/agent"
	"writ.dev/writ/agent/internal/fakenode"
	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/entry"
)

// env is one test's world: a fake clock, a fake server and a data dir.
type env struct {
	t    *testing.T
	clk  *fakeclock.Clock
	srv  *fakenode.Server
	dir  string
	logs *logs
}

func newEnv(t *testing.T, opts fakenode.Options) *env {
	t.Helper()
	clk := fakeclock.New(time.Now().Truncate(time.Second))
	if opts.Clock == nil { // else the server keeps a clock of its own
		opts.Clock = clk
	}
	opts.Logf = t.Logf
	srv := fakenode.Start(t, opts)
	// Short: the admin socket lives in it (sun_path is about 104 bytes).
	dir, err := os.MkdirTemp("", "wa")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return &env{t: t, clk: clk, srv: srv, dir: filepath.Join(dir, "d"), logs: &logs{t: t}}
}

func (e *env) trustBundleFile() string {
	p := filepath.Join(filepath.Dir(e.dir), "ca.pem")
	if err := os.WriteFile(p, e.srv.CAPEM(), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return p
}

func (e *env) config() agent.Config {
	return agent.Config{
		ServerAddress: e.srv.Address(),
		TrustDomain:   e.srv.TrustDomain(),
		DataDir:       e.dir,
		Clock:         e.clk,
		Logger:        slog.New(e.logs),
	}
}

// attestConfig is a config for a first start with a token and the CA.
func (e *env) attestConfig() agent.Config {
	cfg := e.config()
	cfg.JoinToken = e.srv.AddJoinToken()
	cfg.TrustBundlePath = e.trustBundleFile()
	return cfg
}

type running struct {
	a    *agent.Agent
	stop func() error
	done chan struct{}
	err  error
}

// start runs an agent until the test ends (or stop).
func (e *env) start(cfg agent.Config) *running {
	e.t.Helper()
	a, err := agent.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{a: a, done: make(chan struct{})}
	go func() { r.err = a.Run(ctx); close(r.done) }()
	var once sync.Once
	r.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case <-r.done:
			case <-time.After(10 * time.Second):
				e.t.Error("agent did not stop")
			}
		})
		return r.err
	}
	e.t.Cleanup(func() { _ = r.stop() })
	return r
}

// ready waits for the agent to be ready, failing if Run returns first.
func (e *env) ready(r *running) {
	e.t.Helper()
	select {
	case <-r.a.Ready():
	case <-r.done:
		e.t.Fatalf("agent stopped before ready: %v", r.err)
	case <-time.After(20 * time.Second):
		e.t.Fatal("agent not ready in time")
	}
}

// runErr runs an agent that must fail to start and returns its error.
func (e *env) runErr(cfg agent.Config) error {
	e.t.Helper()
	r := e.start(cfg)
	select {
	case <-r.done:
		return r.err
	case <-r.a.Ready():
		e.t.Fatal("agent became ready, want an error")
	case <-time.After(20 * time.Second):
		e.t.Fatal("agent neither failed nor became ready")
	}
	return nil
}

// waitTimers waits until the agent's loops have armed n timers.
func (e *env) waitTimers(n int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.clk.WaitForTimers(ctx, n); err != nil {
		e.t.Fatalf("waiting for %d timers (have %d): %v", n, e.clk.Timers(), err)
	}
}

// advanceUntil drives the agent's clock until cond holds: each time the
// agent has armed a timer due within d (it is then waiting on it), the
// clock moves by d. It fails the test after 15 s.
func (e *env) advanceUntil(what string, d time.Duration, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s", what)
		}
		// A bounded wait, so that cond is looked at again when what it
		// waits for needs no timer.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		err := e.clk.WaitForTimerWithin(ctx, d)
		cancel()
		// Looked at again: what armed that timer may have made cond
		// true first (see fakenode.Stats.Conns).
		if err == nil && !cond() {
			e.clk.Advance(d)
		}
	}
}

// waitTimerWithin waits until the agent has armed a timer due within d.
func (e *env) waitTimerWithin(d time.Duration) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.clk.WaitForTimerWithin(ctx, d); err != nil {
		e.t.Fatalf("waiting for a timer within %s: %v", d, err)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func mustSels(t *testing.T, ss ...string) []entry.Selector {
	out := make([]entry.Selector, len(ss))
	for i, s := range ss {
		var err error
		if out[i], err = entry.ParseSelector(s); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func svidFor(c *svidcache.Cache, entryID string, sel []entry.Selector) *svidcache.X509SVID {
	for _, s := range c.X509SVIDs(sel) {
		if s.EntryID == entryID {
			return s
		}
	}
	return nil
}

var td = spiffeid.RequireTrustDomainFromString("example.org")

func id(td spiffeid.TrustDomain, path string) spiffeid.ID { return spiffeid.RequireFromPath(td, path) }

// logs routes records to t.Log and keeps them for assertions.
type logs struct {
	t     *testing.T
	mu    sync.Mutex // guards recs
	recs  []slog.Record
	attrs []slog.Attr
}

func (l *logs) Enabled(context.Context, slog.Level) bool { return true }
func (l *logs) Handle(ctx context.Context, r slog.Record) error {
	l.mu.Lock()
	l.recs = append(l.recs, r.Clone())
	l.mu.Unlock()
	var buf bytes.Buffer
	_ = slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}).Handle(ctx, r)
	l.t.Log(strings.TrimSpace(buf.String()))
	return nil
}
func (l *logs) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logs) WithGroup(string) slog.Handler      { return l }

// has reports whether a record at level with msg containing sub was logged.
func (l *logs) has(level slog.Level, sub string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.recs {
		if r.Level == level && strings.Contains(r.Message, sub) {
			return true
		}
	}
	return false
}

// text returns every record's message and attributes.
func (l *logs) text() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for _, r := range l.recs {
		b.WriteString(r.Message)
		r.Attrs(func(a slog.Attr) bool {
			b.WriteString(" " + a.String())
			return true
		})
		b.WriteString("\n")
	}
	return b.String()
}
