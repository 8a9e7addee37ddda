package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// buildWrit builds cmd/writ into the temporary directory, or checks the
// binary given.
func (b *bench) buildWrit(ctx context.Context, given string) (string, error) {
	if given != "" {
		abs, err := filepath.Abs(given)
		if err != nil {
			return "", err
		}
		if _, err := os.Stat(abs); err != nil {
			return "", fmt.Errorf("--writ-bin: %w", err)
		}
		b.prog.printf("using %s", abs)
		return abs, nil
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("building writ needs the go tool: %w", err)
	}
	bin := filepath.Join(b.tmp, "writ")
	b.prog.phase("building writ (go build writ.dev/writ/cmd/writ)")
	cmd := exec.CommandContext(ctx, goTool, "build", "-o", bin, "writ.dev/writ/cmd/writ")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build writ.dev/writ/cmd/writ (run from the repository): %w: %s", err, strings.TrimSpace(out.String()))
	}
	return bin, nil
}

// writProc is a running `writ server run` or `writ agent run`.
type writProc struct {
	name string
	cmd  *exec.Cmd
	logs *logWatch
	done chan struct{}
	err  error // set before done closes
}

// startWrit starts bin with args, its JSON log going to logs/<name>.log
// in the temporary directory and to a logWatch.
func (b *bench) startWrit(bin, name string, env []string, args ...string) (*writProc, error) {
	if err := os.MkdirAll(filepath.Join(b.tmp, "logs"), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(b.tmp, "logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	p := &writProc{name: name, logs: newLogWatch(f), done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(childEnvironment(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	p.cmd.SysProcAttr = childAttr()
	if err := p.cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	b.track(p)
	go func() {
		p.err = p.cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *writProc) pid() int { return p.cmd.Process.Pid }

// exited returns an error if the process has exited.
func (p *writProc) exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited (%v); its last log lines:\n%s", p.name, p.err, p.logs.tail.String())
	default:
		return nil
	}
}

// stop sends SIGTERM and waits for the exit, killing after 15 s.
func (p *writProc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// logWatch reads a Writ process's JSON log: it keeps the last lines, the
// node API address the server logged, and the agent's count of X.509-SVIDs
// signed.
type logWatch struct {
	file *os.File
	tail *tailBuffer

	mu       sync.Mutex // guards partial, bindAddr, oauthAddr, signed, signLines
	partial  []byte
	bindAddr string
	// oauthAddr is the OAuth endpoint's address, if the server has one.
	oauthAddr string
	signed    int
	// signLines counts "X.509-SVIDs signed" records: with none, the log
	// format has changed and signed means nothing.
	signLines int
	// synced counts the entries of "entries synced" records.
	synced int
}

func newLogWatch(f *os.File) *logWatch { return &logWatch{file: f, tail: newTailBuffer(40)} }

func (w *logWatch) Write(p []byte) (int, error) {
	_, _ = w.file.Write(p)
	_, _ = w.tail.Write(p)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		w.parse(w.partial[:i])
		w.partial = w.partial[i+1:]
	}
	return len(p), nil
}

// parse reads one log record; lines that are not JSON are ignored.
func (w *logWatch) parse(line []byte) {
	var rec struct {
		Msg         string `json:"msg"`
		BindAddress string `json:"bind_address"`
		OAuth       string `json:"oauth_address"`
		Signed      *int   `json:"signed"`
		ToSign      int    `json:"to_sign"`
		New         int    `json:"new"`
		Backlog     int    `json:"backlog"`
	}
	if json.Unmarshal(line, &rec) != nil {
		return
	}
	switch rec.Msg {
	case "server ready":
		w.bindAddr, w.oauthAddr = rec.BindAddress, rec.OAuth
	case "entries synced":
		w.synced += rec.ToSign + rec.New + rec.Backlog
	case "X.509-SVIDs signed":
		if rec.Signed != nil {
			w.signed += *rec.Signed
			w.signLines++
		}
	}
}

func (w *logWatch) bindAddress() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.bindAddr
}

func (w *logWatch) oauthAddress() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.oauthAddr
}

// syncedCount returns how many new or unsigned entries the agent logged
// as synced.
func (w *logWatch) syncedCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.synced
}

func (w *logWatch) signedCount() (n, records int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.signed, w.signLines
}

// waitFor polls cond every 20 ms until it holds, the timeout passes, a
// process exits or ctx ends.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func() (bool, error), procs ...*writProc) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		for _, p := range procs {
			if err := p.exited(); err != nil {
				return fmt.Errorf("waiting for %s: %w", what, err)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %s", what, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitIdle waits until the processes have used no CPU for quiet, for up
// to timeout: memory is read from processes at rest. It returns whether
// they became idle.
func waitIdle(ctx context.Context, quiet, timeout time.Duration, pids ...int) (bool, error) {
	total := func() (int64, error) {
		var sum int64
		for _, pid := range pids {
			t, err := cpuTicks(pid)
			if err != nil {
				return 0, err
			}
			sum += t
		}
		return sum, nil
	}
	last, err := total()
	if err != nil {
		return false, err
	}
	since := time.Now()
	deadline := since.Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		t, err := total()
		if err != nil {
			return false, err
		}
		if t != last {
			last, since = t, time.Now()
			continue
		}
		if time.Since(since) >= quiet {
			return true, nil
		}
	}
	return false, nil
}

// runWrit runs a writ CLI command and returns its stdout.
func (b *bench) runWrit(ctx context.Context, bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = childEnvironment()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("writ %s: %w: %s", strings.Join(args[:min(2, len(args))], " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// isSocket reports whether path is a Unix socket.
func isSocket(path string) bool {
	fi, err := os.Lstat(path)
	return err == nil && fi.Mode().Type() == fs.ModeSocket
}

var errNoBindAddress = errors.New("the server logged no bind address")
