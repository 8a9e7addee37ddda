package jwtbatch_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"writ.dev/writ/agent/jwtbatch"
	"writ.dev/writ/agent/nodeclient"
)

// fakeSigner records each batch and answers it with one token per
// request naming the entry and audience, unless refuse names the entry
// (a per-request error) or fail is set (the whole call fails). A batch
// waits for release when hold is set.
type fakeSigner struct {
	mu      sync.Mutex // guards batches, ctxs, refuse, fail
	batches [][]nodeclient.JWTRequest
	ctxs    []context.Context
	refuse  map[string]bool
	fail    error
	wrong   bool          // answer one result too few
	hold    chan struct{} // if not nil, each batch waits to receive from it
	started chan int      // if not nil, gets each batch's size when it starts
}

var errRefused = errors.New("entry is not authorized")

func (f *fakeSigner) BatchSignJWT(ctx context.Context, reqs []nodeclient.JWTRequest) ([]nodeclient.JWTResult, error) {
	f.mu.Lock()
	f.batches = append(f.batches, slices.Clone(reqs))
	f.ctxs = append(f.ctxs, ctx)
	hold, started, fail, wrong := f.hold, f.started, f.fail, f.wrong
	f.mu.Unlock()
	if started != nil {
		started <- len(reqs)
	}
	if hold != nil {
		<-hold
	}
	if fail != nil {
		return nil, fail
	}
	out := make([]nodeclient.JWTResult, len(reqs))
	for i, r := range reqs {
		f.mu.Lock()
		refused := f.refuse[r.EntryID]
		f.mu.Unlock()
		if refused {
			out[i].Err = fmt.Errorf("%w: %s", errRefused, r.EntryID)
			continue
		}
		out[i] = nodeclient.JWTResult{Token: tokenFor(r.EntryID, r.Audience), ExpiresAt: time.Unix(1e9, 0)}
	}
	if wrong {
		out = out[:len(out)-1]
	}
	return out, nil
}

func (f *fakeSigner) sizes() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	var n []int
	for _, b := range f.batches {
		n = append(n, len(b))
	}
	return n
}

func tokenFor(entryID string, aud []string) string {
	return "token:" + entryID + ":" + strings.Join(aud, ",")
}

func newBatcher(t *testing.T, f *fakeSigner, cfg jwtbatch.Config) *jwtbatch.Batcher {
	t.Helper()
	cfg.Signer = f
	b, err := jwtbatch.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// waitQueued waits until n requests wait for a batch.
func waitQueued(t *testing.T, b *jwtbatch.Batcher, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for b.Queued() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests queued, want %d", b.Queued(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

type ctxKey struct{}

func TestLoneRequestGoesAtOnceWithItsContext(t *testing.T) {
	f := &fakeSigner{}
	b := newBatcher(t, f, jwtbatch.Config{})
	ctx := context.WithValue(t.Context(), ctxKey{}, "caller")
	tok, err := b.SignJWTSVID(ctx, "e1", []string{"db"})
	if err != nil || tok != tokenFor("e1", []string{"db"}) {
		t.Fatalf("SignJWTSVID = %q, %v", tok, err)
	}
	if got := f.sizes(); !slices.Equal(got, []int{1}) {
		t.Errorf("batches %v, want [1]", got)
	}
	if f.ctxs[0].Value(ctxKey{}) != "caller" {
		t.Error("a lone request was not sent under its caller's context")
	}
}

// startCallers starts n callers of entries e0..e(n-1) (audience aud-i)
// and returns a channel of their errors (nil when each got its own
// token).
func startCallers(ctx context.Context, b *jwtbatch.Batcher, first, n int) <-chan error {
	errs := make(chan error, n)
	for i := first; i < first+n; i++ {
		go func() {
			id, aud := fmt.Sprintf("e%d", i), []string{fmt.Sprintf("aud-%d", i)}
			tok, err := b.SignJWTSVID(ctx, id, aud)
			switch {
			case err != nil:
				errs <- fmt.Errorf("%s: %w", id, err)
			case tok != tokenFor(id, aud):
				errs <- fmt.Errorf("%s got %q, the token of another request", id, tok)
			default:
				errs <- nil
			}
		}()
	}
	return errs
}

func TestConcurrentRequestsGoInOneBatch(t *testing.T) {
	f := &fakeSigner{hold: make(chan struct{}), started: make(chan int, 10)}
	b := newBatcher(t, f, jwtbatch.Config{})
	first := startCallers(t.Context(), b, 0, 1)
	if n := <-f.started; n != 1 {
		t.Fatalf("first batch of %d", n)
	}
	// While the first is being signed, 20 more arrive: they wait, and
	// then go together in one call.
	rest := startCallers(t.Context(), b, 1, 20)
	waitQueued(t, b, 20)
	f.hold <- struct{}{}
	if n := <-f.started; n != 20 {
		t.Fatalf("second batch of %d, want 20", n)
	}
	f.hold <- struct{}{}
	if err := <-first; err != nil {
		t.Error(err)
	}
	for range 20 {
		if err := <-rest; err != nil {
			t.Error(err)
		}
	}
	if got := f.sizes(); !slices.Equal(got, []int{1, 20}) {
		t.Errorf("batches %v, want [1 20]", got)
	}
	// The batch keeps arrival order: the first queued is first.
	f.mu.Lock()
	defer f.mu.Unlock()
	seen := map[string]bool{}
	for _, r := range f.batches[1] {
		if seen[r.EntryID] {
			t.Errorf("%s sent twice", r.EntryID)
		}
		seen[r.EntryID] = true
	}
}

func TestRefusedRequestFailsAlone(t *testing.T) {
	f := &fakeSigner{hold: make(chan struct{}), started: make(chan int, 10), refuse: map[string]bool{"e3": true}}
	b := newBatcher(t, f, jwtbatch.Config{})
	first := startCallers(t.Context(), b, 0, 1)
	<-f.started
	rest := startCallers(t.Context(), b, 1, 5)
	waitQueued(t, b, 5)
	close(f.hold)
	<-f.started
	if err := <-first; err != nil {
		t.Error(err)
	}
	var refused int
	for range 5 {
		err := <-rest
		switch {
		case errors.Is(err, errRefused) && strings.HasPrefix(err.Error(), "e3:"):
			refused++
		case err != nil:
			t.Error(err)
		}
	}
	if refused != 1 {
		t.Errorf("%d refused, want only e3", refused)
	}
}

func TestFailedCallFailsItsRequestsOnly(t *testing.T) {
	errDown := errors.New("server unavailable")
	f := &fakeSigner{hold: make(chan struct{}), started: make(chan int, 10)}
	b := newBatcher(t, f, jwtbatch.Config{})
	first := startCallers(t.Context(), b, 0, 1)
	<-f.started
	rest := startCallers(t.Context(), b, 1, 4)
	waitQueued(t, b, 4)
	f.mu.Lock()
	f.fail = errDown // the batch of 4 fails as a whole
	f.mu.Unlock()
	f.hold <- struct{}{}
	if err := <-first; err != nil {
		t.Errorf("the first batch was sent before the failure: %v", err)
	}
	<-f.started
	f.hold <- struct{}{}
	for range 4 {
		if err := <-rest; !errors.Is(err, errDown) {
			t.Errorf("got %v, want the call's error", err)
		}
	}
	// The next request is sent again, and succeeds.
	f.mu.Lock()
	f.fail, f.hold, f.started = nil, nil, nil
	f.mu.Unlock()
	if err := <-startCallers(t.Context(), b, 9, 1); err != nil {
		t.Errorf("after a failed batch: %v", err)
	}
}

func TestBatchesAreBounded(t *testing.T) {
	f := &fakeSigner{hold: make(chan struct{}), started: make(chan int, 10)}
	b := newBatcher(t, f, jwtbatch.Config{MaxBatch: 3})
	first := startCallers(t.Context(), b, 0, 1)
	<-f.started
	rest := startCallers(t.Context(), b, 1, 7)
	waitQueued(t, b, 7)
	close(f.hold)
	for range 3 {
		<-f.started
	}
	if err := <-first; err != nil {
		t.Error(err)
	}
	for range 7 {
		if err := <-rest; err != nil {
			t.Error(err)
		}
	}
	if got := f.sizes(); !slices.Equal(got, []int{1, 3, 3, 1}) {
		t.Errorf("batches %v, want [1 3 3 1]", got)
	}
}

// TestBatchesAreBoundedInBytes: requests with huge audiences go in
// batches of their own, so that they cannot make a batch too large for
// the server and fail the other requests in it.
func TestBatchesAreBoundedInBytes(t *testing.T) {
	f := &fakeSigner{hold: make(chan struct{}), started: make(chan int, 10)}
	b := newBatcher(t, f, jwtbatch.Config{MaxBatchBytes: 1000})
	first := startCallers(t.Context(), b, 0, 1)
	<-f.started
	huge := []string{strings.Repeat("h", 600)}
	errs := make(chan error, 4)
	for i := range 4 {
		go func() {
			aud := []string{"small"}
			if i%2 == 0 {
				aud = huge
			}
			id := fmt.Sprintf("e%d", i+1)
			tok, err := b.SignJWTSVID(t.Context(), id, aud)
			if err == nil && tok != tokenFor(id, aud) {
				err = fmt.Errorf("%s got another request's token", id)
			}
			errs <- err
		}()
		waitQueued(t, b, i+1) // in this order
	}
	close(f.hold)
	if err := <-first; err != nil {
		t.Error(err)
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	// huge+small (< 1000 bytes), then huge+small again.
	if got := f.sizes(); !slices.Equal(got, []int{1, 2, 2}) {
		t.Errorf("batches %v, want [1 2 2]", got)
	}
}

func TestInFlightBound(t *testing.T) {
	f := &fakeSigner{hold: make(chan struct{}), started: make(chan int, 10)}
	b := newBatcher(t, f, jwtbatch.Config{MaxInFlight: 2})
	a := startCallers(t.Context(), b, 0, 2)
	<-f.started
	<-f.started // two lone requests out at once
	rest := startCallers(t.Context(), b, 2, 3)
	waitQueued(t, b, 3)
	close(f.hold)
	<-f.started
	for range 2 {
		if err := <-a; err != nil {
			t.Error(err)
		}
	}
	for range 3 {
		if err := <-rest; err != nil {
			t.Error(err)
		}
	}
	if got := f.sizes(); !slices.Equal(got, []int{1, 1, 3}) {
		t.Errorf("batches %v, want [1 1 3]", got)
	}
}

func TestCallerThatStopsWaiting(t *testing.T) {
	f := &fakeSigner{hold: make(chan struct{}), started: make(chan int, 10)}
	b := newBatcher(t, f, jwtbatch.Config{})
	first := startCallers(t.Context(), b, 0, 1)
	<-f.started
	ctx, cancel := context.WithCancel(t.Context())
	gone := startCallers(ctx, b, 1, 1)
	rest := startCallers(t.Context(), b, 2, 2)
	waitQueued(t, b, 3)
	cancel()
	if err := <-gone; !errors.Is(err, context.Canceled) {
		t.Fatalf("a canceled caller got %v", err)
	}
	close(f.hold)
	<-f.started
	if err := <-first; err != nil {
		t.Error(err)
	}
	for range 2 {
		if err := <-rest; err != nil {
			t.Error(err)
		}
	}
	// Its request was dropped before the batch went out.
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.batches[1] {
		if r.EntryID == "e1" {
			t.Error("the canceled request was sent")
		}
	}
	if len(f.batches[1]) != 2 {
		t.Errorf("second batch %v", f.batches[1])
	}
}

func TestResultCountMismatch(t *testing.T) {
	f := &fakeSigner{wrong: true}
	b := newBatcher(t, f, jwtbatch.Config{})
	if _, err := b.SignJWTSVID(t.Context(), "e1", []string{"db"}); !errors.Is(err, jwtbatch.ErrNoResult) {
		t.Fatalf("got %v, want ErrNoResult", err)
	}
}

func TestConfig(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  jwtbatch.Config
	}{
		{name: "no signer", cfg: jwtbatch.Config{}},
		{name: "batch too large", cfg: jwtbatch.Config{Signer: &fakeSigner{}, MaxBatch: nodeclient.MaxJWTBatch + 1}},
		{name: "negative batch", cfg: jwtbatch.Config{Signer: &fakeSigner{}, MaxBatch: -1}},
		{name: "negative in flight", cfg: jwtbatch.Config{Signer: &fakeSigner{}, MaxInFlight: -1}},
		{name: "negative bytes", cfg: jwtbatch.Config{Signer: &fakeSigner{}, MaxBatchBytes: -1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := jwtbatch.New(tt.cfg); err == nil {
				t.Error("accepted")
			}
		})
	}
}

// TestManyConcurrentCallers: every caller gets its own token whatever
// the interleaving (run with -race).
func TestManyConcurrentCallers(t *testing.T) {
	f := &fakeSigner{refuse: map[string]bool{"e7": true, "e70": true}}
	b := newBatcher(t, f, jwtbatch.Config{MaxBatch: 5})
	errs := startCallers(t.Context(), b, 0, 200)
	for range 200 {
		if err := <-errs; err != nil && !errors.Is(err, errRefused) {
			t.Error(err)
		}
	}
	total := 0
	for _, n := range f.sizes() {
		total += n
	}
	if total != 200 {
		t.Errorf("%d requests sent for 200 callers", total)
	}
	if b.Queued() != 0 {
		t.Errorf("%d left queued", b.Queued())
	}
}
