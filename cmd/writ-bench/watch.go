package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// watcher follows a raw FetchX509SVID stream, as a watching workload
// does, and notes when each SPIFFE ID first arrived. It reads the IDs
// from the response without parsing certificates, so that the arrival
// time is the response's.
type watcher struct {
	conn   *grpc.ClientConn
	cancel context.CancelFunc
	done   chan struct{}

	mu        sync.Mutex // guards present, firstSeen, updates, err, changed
	present   map[string]bool
	firstSeen map[string]time.Time
	updates   int
	err       error
	changed   chan struct{} // closed and replaced at each update
}

// startWatcher opens the stream on socket.
func startWatcher(ctx context.Context, socket string) (*watcher, error) {
	conn, err := grpc.NewClient("unix:"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(ctx, metadata.Pairs("workload.spiffe.io", "true")))
	stream, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		cancel()
		conn.Close()
		return nil, err
	}
	w := &watcher{
		conn: conn, cancel: cancel, done: make(chan struct{}),
		present: map[string]bool{}, firstSeen: map[string]time.Time{}, changed: make(chan struct{}),
	}
	go w.recv(stream)
	return w, nil
}

func (w *watcher) recv(stream grpc.ServerStreamingClient[workload.X509SVIDResponse]) {
	defer close(w.done)
	for {
		resp, err := stream.Recv()
		at := time.Now()
		w.mu.Lock()
		if err != nil {
			w.err = fmt.Errorf("Workload API stream: %w", err)
		} else {
			w.updates++
			w.present = make(map[string]bool, len(resp.GetSvids()))
			for _, s := range resp.GetSvids() {
				id := s.GetSpiffeId()
				w.present[id] = true
				if _, ok := w.firstSeen[id]; !ok {
					w.firstSeen[id] = at
				}
			}
		}
		close(w.changed)
		w.changed = make(chan struct{})
		w.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// close ends the stream.
func (w *watcher) close() {
	w.cancel()
	<-w.done
	w.conn.Close()
}

// errWatchTimeout: the stream did not reach the state waited for.
var errWatchTimeout = errors.New("timed out")

// wait waits until cond, called with the latest IDs, holds.
func (w *watcher) wait(ctx context.Context, timeout time.Duration, cond func(present map[string]bool) bool) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		w.mu.Lock()
		ok, err, ch := cond(w.present), w.err, w.changed
		w.mu.Unlock()
		if ok {
			return nil
		}
		if err != nil {
			return err
		}
		select {
		case <-ch:
		case <-t.C:
			return fmt.Errorf("%w after %s", errWatchTimeout, timeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// seen returns when id first arrived.
func (w *watcher) seen(id string) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t, ok := w.firstSeen[id]
	return t, ok
}

// count returns the number of SVIDs in the latest response.
func (w *watcher) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.present)
}
