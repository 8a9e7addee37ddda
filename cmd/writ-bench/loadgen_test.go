package main

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func TestRunLoad(t *testing.T) {
	var calls atomic.Int64
	call := func(context.Context, int) error {
		calls.Add(1)
		time.Sleep(time.Millisecond)
		return nil
	}
	res, err := runLoad(context.Background(), []callFunc{call, call}, 20*time.Millisecond, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	// Two callers of about 1 ms calls for 100 ms: on the order of 200
	// measured, and fewer than all made (the warm-up is not measured).
	if n := len(res.lat); n < 20 || int64(n) >= calls.Load() {
		t.Errorf("%d calls measured of %d made", n, calls.Load())
	}
	for _, l := range res.lat {
		if l < time.Millisecond || l > 100*time.Millisecond {
			t.Fatalf("latency %s outside the window", l)
		}
	}
	if got, want := res.rate(), float64(len(res.lat))/0.1; got != want {
		t.Errorf("rate %v, want %v", got, want)
	}
}

func TestRunLoadError(t *testing.T) {
	errBoom := errors.New("boom")
	ok := func(context.Context, int) error { time.Sleep(time.Millisecond); return nil }
	failing := func(ctx context.Context, i int) error {
		if i == 5 {
			return errBoom
		}
		return ok(ctx, i)
	}
	start := time.Now()
	_, err := runLoad(context.Background(), []callFunc{ok, failing}, 0, 10*time.Second)
	if !errors.Is(err, errBoom) {
		t.Fatalf("err = %v, want errBoom", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Error("runLoad did not stop at the first error")
	}
}

// TestStubFixture: the stub's responses are what go-spiffe's client
// accepts.
func TestStubFixture(t *testing.T) {
	fx, err := newStubFixture(3, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(fx.x509.Svids) != 3 {
		t.Fatalf("%d SVIDs", len(fx.x509.Svids))
	}
	for _, s := range fx.x509.Svids {
		svid, err := x509svid.ParseRaw(s.X509Svid, s.X509SvidKey)
		if err != nil {
			t.Fatal(err)
		}
		if svid.ID.String() != s.SpiffeId {
			t.Errorf("SVID of %s in a response for %s", svid.ID, s.SpiffeId)
		}
	}
	tok, err := jwtsvid.ParseInsecure(fx.jwt.Svids[0].Svid, []string{stubAudience})
	if err != nil {
		t.Fatal(err)
	}
	if tok.ID.String() != fx.jwt.Svids[0].SpiffeId || fx.validate.SpiffeId != tok.ID.String() {
		t.Errorf("JWT-SVID of %s, response for %s, validation for %s", tok.ID, fx.jwt.Svids[0].SpiffeId, fx.validate.SpiffeId)
	}
}
