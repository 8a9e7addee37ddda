package taskgroup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"

	"google.golang.org/grpc"

	"writ.dev/writ/internal/logkey"
)

// Group is a set of tasks that stop together. The zero value is not
// usable; call New.
type Group struct {
	ctx    context.Context
	cancel context.CancelFunc
	log    *slog.Logger
	wg     sync.WaitGroup

	mu  sync.Mutex // guards err
	err error
}

// New returns a group and the context its tasks run under, which ends
// when ctx ends, when a task fails, or when Stop is called. log (nil
// discards) records each listener that starts and stops.
func New(ctx context.Context, log *slog.Logger) (*Group, context.Context) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(ctx)
	return &Group{ctx: ctx, cancel: cancel, log: log}, ctx
}

// Go runs fn in a new goroutine. An error from fn, other than one caused
// by the group's context ending, stops the group; Wait returns the first,
// prefixed with name unless its message already begins with it.
func (g *Group) Go(name string, fn func(ctx context.Context) error) {
	g.wg.Go(func() {
		err := fn(g.ctx)
		if err != nil && g.ctx.Err() != nil && errors.Is(err, context.Canceled) {
			err = nil
		}
		g.fail(name, err)
	})
}

// Serve runs the listener serve in a new goroutine and calls stop once
// the group stops. address is what the listener is bound to, for the log.
// serve returning before the group stops, even without an error, stops
// the group: a listener is meant to serve until told otherwise.
func (g *Group) Serve(name, address string, serve func() error, stop func()) {
	g.log.Info("listening", logkey.Task, name, logkey.Address, address)
	done := make(chan struct{})
	g.wg.Go(func() {
		defer close(done)
		err := serve()
		if isStopped(err) {
			err = nil
		}
		if err == nil && g.ctx.Err() == nil {
			err = errors.New("stopped serving")
		}
		g.fail(name, err)
	})
	g.wg.Go(func() {
		select {
		case <-g.ctx.Done():
			stop()
			<-done
			g.log.Debug("listener stopped", logkey.Task, name, logkey.Address, address)
		case <-done:
		}
	})
}

// Stop asks every task to stop. It does not wait; Wait does.
func (g *Group) Stop() { g.cancel() }

// Done is closed when the group begins to stop.
func (g *Group) Done() <-chan struct{} { return g.ctx.Done() }

// Err returns the first task error so far, or nil.
func (g *Group) Err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

// Wait waits for every task to return and returns the first error.
func (g *Group) Wait() error {
	g.wg.Wait()
	g.cancel()
	return g.Err()
}

func (g *Group) fail(name string, err error) {
	if err == nil {
		return
	}
	g.mu.Lock()
	if g.err == nil {
		g.err = err
		if !strings.HasPrefix(err.Error(), name+": ") {
			g.err = fmt.Errorf("%s: %w", name, err)
		}
	}
	g.mu.Unlock()
	g.cancel()
}

func isStopped(err error) bool {
	return errors.Is(err, grpc.ErrServerStopped) || errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed)
}
