package taskgroup_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"testing"

	"writ.dev/writ/internal/taskgroup"
)

var errBoom = errors.New("boom")

func TestFirstErrorStopsAll(t *testing.T) {
	g, _ := taskgroup.New(t.Context(), nil)
	stopped := make(chan struct{})
	g.Go("waiter", func(ctx context.Context) error {
		<-ctx.Done()
		close(stopped)
		return ctx.Err()
	})
	g.Go("failer", func(context.Context) error { return errBoom })
	err := g.Wait()
	if !errors.Is(err, errBoom) || err.Error() != "failer: boom" {
		t.Fatalf("Wait = %v, want failer: boom", err)
	}
	select {
	case <-stopped:
	default:
		t.Fatal("the other task was not stopped")
	}
}

func TestParentContextEndsCleanly(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	g, _ := taskgroup.New(ctx, nil)
	g.Go("waiter", func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
	cancel()
	if err := g.Wait(); err != nil {
		t.Fatalf("Wait = %v, want nil", err)
	}
}

func TestServeStopsListener(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.NotFoundHandler()}
	g, _ := taskgroup.New(t.Context(), nil)
	g.Serve("http", lis.Addr().String(), func() error { return srv.Serve(lis) }, func() { _ = srv.Close() })
	resp, err := http.Get("http://" + lis.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	g.Stop()
	if err := g.Wait(); err != nil {
		t.Fatalf("Wait = %v, want nil", err)
	}
	if _, err := net.Dial("tcp", lis.Addr().String()); err == nil {
		t.Fatal("listener still accepts after Wait")
	}
}

func TestServeReturningEarlyFails(t *testing.T) {
	g, _ := taskgroup.New(t.Context(), nil)
	g.Serve("odd", "nowhere", func() error { return nil }, func() {})
	if err := g.Wait(); err == nil {
		t.Fatal("Wait = nil after a listener stopped on its own")
	}
}
