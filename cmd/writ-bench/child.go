package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// The benchmark runs parts of itself in child processes: the stub
// Workload API (a server apart from the client, as the agent is), and the
// holder of many open streams (whose memory must not count as the
// benchmark's). A child is this executable with childEnv set; it prints
// readyLine (or "open N") on stdout when ready and exits when its stdin
// closes.
const (
	childEnv       = "WRIT_BENCH_CHILD" // "stub", "streams", ...
	childSocketEnv = "WRIT_BENCH_SOCKET"
	childCountEnv  = "WRIT_BENCH_COUNT" // SVIDs of the stub; streams to open
	readyLine      = "ready"
	// streamsPerConn is the number of streams the streams child opens
	// on each connection: below the agent's default of 64 concurrent
	// streams per connection.
	streamsPerConn = 50
)

// runChild runs the child mode and returns its exit code.
func runChild(mode string) int {
	socket := os.Getenv(childSocketEnv)
	n, err := envInt(childCountEnv)
	if err == nil {
		switch mode {
		case "stub":
			err = runStubChild(socket, n)
		case "streams":
			err = runStreamsChild(socket, n)
		case tmplChild:
			err = runTemplateCaller(socket)
		case signerChild:
			err = runSignerChild()
		case relayChild:
			err = runRelayChild(socket)
		default:
			err = fmt.Errorf("unknown child mode %q", mode)
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "writ-bench %s: %v\n", mode, err)
		return 1
	}
	return 0
}

func waitStdinClosed() { _, _ = io.Copy(io.Discard, os.Stdin) }

// runStreamsChild opens n FetchX509SVID streams on socket, streamsPerConn
// per connection, waits for the first response on each, prints "open n"
// and holds them until stdin closes.
func runStreamsChild(socket string, n int) error {
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(context.Background(), metadata.Pairs("workload.spiffe.io", "true")))
	defer cancel()
	nConns := (n + streamsPerConn - 1) / streamsPerConn
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex // guards first
		first error
	)
	conns := make([]*grpc.ClientConn, 0, nConns)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	sem := make(chan struct{}, 8) // connections being opened at once
	for i := range nConns {
		cc, err := grpc.NewClient("unix:"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		conns = append(conns, cc)
		k := min(streamsPerConn, n-i*streamsPerConn)
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			client := workload.NewSpiffeWorkloadAPIClient(cc)
			for range k {
				s, err := client.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
				if err == nil {
					_, err = s.Recv()
				}
				if err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	if first != nil {
		return fmt.Errorf("open streams: %w", first)
	}
	fmt.Printf("open %d\n", n)
	waitStdinClosed()
	return nil
}

// childProc is a running child.
type childProc struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *tailBuffer
	done   chan struct{}
	err    error // set before done closes
}

// startChild starts this executable in child mode, with env added to its
// environment.
func (b *bench) startChild(mode, socket string, n int, env ...string) (*childProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	c := &childProc{name: mode, lines: make(chan string, 16), stderr: newTailBuffer(40), done: make(chan struct{})}
	c.cmd = exec.Command(exe)
	c.cmd.Env = append(childEnvironment(), childEnv+"="+mode, childSocketEnv+"="+socket, fmt.Sprintf("%s=%d", childCountEnv, n))
	c.cmd.Env = append(c.cmd.Env, env...)
	c.cmd.Stderr = c.stderr
	c.cmd.SysProcAttr = childAttr()
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s child: %w", mode, err)
	}
	b.track(c)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case c.lines <- sc.Text():
			default:
			}
		}
		c.err = c.cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// waitLine waits for the child to print a line starting with prefix.
func (c *childProc) waitLine(ctx context.Context, prefix string, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case l := <-c.lines:
			if strings.HasPrefix(l, prefix) {
				return l, nil
			}
		case <-c.done:
			return "", fmt.Errorf("%s child exited: %v: %s", c.name, c.err, c.stderr.String())
		case <-t.C:
			return "", fmt.Errorf("%s child not ready within %s: %s", c.name, timeout, c.stderr.String())
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

// stop closes the child's stdin and waits for it to exit, killing it
// after 10 s.
func (c *childProc) stop() {
	c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// tailBuffer keeps the last max complete lines written to it, and the
// unfinished one.
type tailBuffer struct {
	mu      sync.Mutex // guards lines, partial
	max     int
	lines   []string
	partial string
}

func newTailBuffer(max int) *tailBuffer { return &tailBuffer{max: max} }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.partial + string(p)
	parts := strings.Split(s, "\n")
	t.partial = parts[len(parts)-1]
	for _, l := range parts[:len(parts)-1] {
		t.add(l)
	}
	return len(p), nil
}

func (t *tailBuffer) add(l string) {
	t.lines = append(t.lines, l)
	if len(t.lines) > t.max {
		t.lines = t.lines[len(t.lines)-t.max:]
	}
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := strings.Join(t.lines, "\n")
	if t.partial != "" {
		out += "\n" + t.partial
	}
	return strings.TrimSpace(out)
}

// childEnvironment is the environment of every process the benchmark
// starts: its own, without settings that would change what is measured
// (Writ's and the Workload API's variables, Go runtime tuning).
func childEnvironment() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "WRIT_"), strings.HasPrefix(k, "SPIFFE_"),
			k == "GOGC", k == "GOMEMLIMIT", k == "GODEBUG", k == "GOMAXPROCS", k == "GORACE":
			continue
		}
		env = append(env, kv)
	}
	return env
}
