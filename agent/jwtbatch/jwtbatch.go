package jwtbatch

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"writ.dev/writ/agent/nodeclient"
)

// Defaults of Config.
const (
	DefaultMaxBatch    = nodeclient.MaxJWTBatch
	DefaultMaxInFlight = 1
	// DefaultMaxBatchBytes bounds the entry IDs and audiences of one
	// batch, well within the server's 4 MiB message limit: a workload
	// asking for huge audiences cannot make a batch, and so the other
	// workloads' requests in it, fail.
	DefaultMaxBatchBytes = 1 << 20
)

// ErrNoResult: the signer answered a batch with a number of results other
// than the number of requests.
var ErrNoResult = errors.New("jwtbatch: no result for the request")

// Signer signs a batch of JWT-SVIDs, one result per request in order:
// *nodeclient.Client (through the agent's current connection).
type Signer interface {
	BatchSignJWT(ctx context.Context, reqs []nodeclient.JWTRequest) ([]nodeclient.JWTResult, error)
}

// Config configures a Batcher.
type Config struct {
	// Signer signs the batches (required).
	Signer Signer
	// MaxBatch bounds the requests of one batch. Zero means
	// DefaultMaxBatch; it may not exceed nodeclient.MaxJWTBatch.
	MaxBatch int
	// MaxInFlight bounds the batches being signed at once. Zero means
	// DefaultMaxInFlight.
	MaxInFlight int
	// MaxBatchBytes bounds the bytes of entry IDs and audiences of a
	// batch (a batch holds at least one request whatever its size). Zero
	// means DefaultMaxBatchBytes.
	MaxBatchBytes int
}

// Batcher coalesces concurrent JWT-SVID requests. It is safe for
// concurrent use and starts no goroutine until requests queue up.
type Batcher struct {
	signer      Signer
	maxBatch    int
	maxInFlight int
	maxBytes    int

	mu       sync.Mutex // guards queue and inFlight
	queue    []*pending // non-empty only while inFlight == maxInFlight
	inFlight int
}

// pending is one queued request.
type pending struct {
	ctx  context.Context
	req  nodeclient.JWTRequest
	res  nodeclient.JWTResult
	done chan struct{} // closed when res is set
}

// New returns a Batcher for cfg.
func New(cfg Config) (*Batcher, error) {
	switch {
	case cfg.Signer == nil:
		return nil, errors.New("jwtbatch: signer is required")
	case cfg.MaxBatch < 0 || cfg.MaxBatch > nodeclient.MaxJWTBatch:
		return nil, fmt.Errorf("jwtbatch: batch size %d out of range (1 to %d)", cfg.MaxBatch, nodeclient.MaxJWTBatch)
	case cfg.MaxInFlight < 0:
		return nil, fmt.Errorf("jwtbatch: negative in-flight bound %d", cfg.MaxInFlight)
	case cfg.MaxBatchBytes < 0:
		return nil, fmt.Errorf("jwtbatch: negative batch size in bytes %d", cfg.MaxBatchBytes)
	}
	if cfg.MaxBatch == 0 {
		cfg.MaxBatch = DefaultMaxBatch
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.MaxBatchBytes == 0 {
		cfg.MaxBatchBytes = DefaultMaxBatchBytes
	}
	return &Batcher{signer: cfg.Signer, maxBatch: cfg.MaxBatch, maxInFlight: cfg.MaxInFlight, maxBytes: cfg.MaxBatchBytes}, nil
}

// SignJWTSVID returns a JWT-SVID of entryID for audience, signed in a
// batch with the requests that arrived meanwhile. The error is the
// request's own (refused by the server), or the batch's (the call
// failed), or ctx's.
func (b *Batcher) SignJWTSVID(ctx context.Context, entryID string, audience []string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	req := nodeclient.JWTRequest{EntryID: entryID, Audience: audience}
	b.mu.Lock()
	if b.inFlight < b.maxInFlight {
		// The queue is empty: this request goes alone, now, under the
		// caller's own context.
		b.inFlight++
		b.mu.Unlock()
		res := b.signOne(ctx, req)
		b.finished()
		return res.Token, res.Err
	}
	p := &pending{ctx: ctx, req: req, done: make(chan struct{})}
	b.queue = append(b.queue, p)
	b.mu.Unlock()
	select {
	case <-p.done:
		return p.res.Token, p.res.Err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (b *Batcher) signOne(ctx context.Context, req nodeclient.JWTRequest) nodeclient.JWTResult {
	out, err := b.signer.BatchSignJWT(ctx, []nodeclient.JWTRequest{req})
	switch {
	case err != nil:
		return nodeclient.JWTResult{Err: err}
	case len(out) != 1:
		return nodeclient.JWTResult{Err: fmt.Errorf("%w: %d results for 1 request", ErrNoResult, len(out))}
	}
	return out[0]
}

// finished is called when a batch has come back: the queue, if any, goes
// out as the next batch from a goroutine of its own (the caller that
// finished returns at once); otherwise a slot is freed.
func (b *Batcher) finished() {
	if next := b.next(); next != nil {
		go b.run(next)
	}
}

// next takes the next batch from the queue, or frees the caller's slot
// and returns nil if the queue is empty.
func (b *Batcher) next() []*pending {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.queue) == 0 {
		b.inFlight--
		return nil
	}
	n, size := 0, 0
	for n < min(len(b.queue), b.maxBatch) {
		size += requestSize(b.queue[n].req)
		if n > 0 && size > b.maxBytes {
			break
		}
		n++
	}
	batch := b.queue[:n:n]
	b.queue = b.queue[n:]
	if len(b.queue) == 0 {
		b.queue = nil // let the backing array go
	}
	return batch
}

// requestSize is what a request adds to a batch, roughly as encoded.
func requestSize(r nodeclient.JWTRequest) int {
	n := len(r.EntryID) + 8
	for _, a := range r.Audience {
		n += len(a) + 2
	}
	return n
}

// run signs batches until the queue is empty.
func (b *Batcher) run(batch []*pending) {
	for batch != nil {
		b.send(batch)
		batch = b.next()
	}
}

// send signs one batch and hands each caller its result. Requests whose
// callers have stopped waiting are left out. The call runs under a
// context of its own, bounded by the signer's timeouts: one caller going
// away must not fail the others.
func (b *Batcher) send(batch []*pending) {
	live := batch[:0:0]
	reqs := make([]nodeclient.JWTRequest, 0, len(batch))
	for _, p := range batch {
		if err := p.ctx.Err(); err != nil {
			p.res.Err = err
			close(p.done)
			continue
		}
		live = append(live, p)
		reqs = append(reqs, p.req)
	}
	if len(live) == 0 {
		return
	}
	out, err := b.signer.BatchSignJWT(context.Background(), reqs)
	if err == nil && len(out) != len(live) {
		err = fmt.Errorf("%w: %d results for %d requests", ErrNoResult, len(out), len(live))
	}
	for i, p := range live {
		if err != nil {
			p.res.Err = err
		} else {
			p.res = out[i]
		}
		close(p.done)
	}
}
