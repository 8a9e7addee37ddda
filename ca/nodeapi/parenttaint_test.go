package nodeapi_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"google.golang.org/grpc"

	agentv1 "writ.dev/writ/ca/api/agent/v1"
	"writ.dev/writ/ca/keymanager/upstream"
)

// parentAgent serves WatchBundle as a parent deployment's agent does: it
// sends the messages the test puts in msgs.
type parentAgent struct {
	agentv1.UnimplementedDownstreamServiceServer
	msgs chan *agentv1.WatchBundleResponse
}

func (p *parentAgent) WatchBundle(_ *agentv1.WatchBundleRequest, stream grpc.ServerStreamingServer[agentv1.WatchBundleResponse]) error {
	for {
		select {
		case m := <-p.msgs:
			if err := stream.Send(m); err != nil {
				return err
			}
		case <-stream.Context().Done():
			return nil
		}
	}
}

// A nested server tells its agents of the X.509 authorities its parent
// announced tainted, with its own, and LocalX509Trust (the remote admin
// API's trust) returns them: an SVID of a CA the parent tainted no
// longer authenticates at the child. When the parent clears the taint,
// so does the child.
func TestParentTaintedAuthorities(t *testing.T) {
	dir, err := os.MkdirTemp("", "pt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "a.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	p := &parentAgent{msgs: make(chan *agentv1.WatchBundleResponse)}
	srv := grpc.NewServer()
	agentv1.RegisterDownstreamServiceServer(srv, p)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	w, err := upstream.NewWrit(upstream.WritConfig{SocketPath: sock, TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })

	e := newEnv(t, envOptions{parent: w})
	ctx, cancel := context.WithCancel(ctxT(t))
	followed := make(chan error, 1)
	go func() { followed <- w.Follow(ctx, e.store, nil) }()
	t.Cleanup(func() { cancel(); <-followed })
	s := e.sync(e.attest(agentA))
	s.next()

	// The parent's bundle as it is here: only the taint is news.
	raw, err := e.bundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	own := []string{}
	if tn := s.lastTainted; tn != nil {
		own = slices.Clone(tn.X509AuthorityIds)
	}
	const parentCA = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"
	send := func(ids ...string) {
		select {
		case p.msgs <- &agentv1.WatchBundleResponse{Bundle: raw, TaintedX509AuthorityIds: ids}:
		case <-ctx.Done():
			t.Fatal("the child did not follow the parent's bundle")
		}
	}
	send(parentCA)
	s.until("the parent's taint pushed", func() bool {
		return s.lastTainted != nil && slices.Contains(s.lastTainted.X509AuthorityIds, parentCA)
	})
	if got := w.ParentTainted(); !slices.Equal(got, []string{parentCA}) {
		t.Fatalf("ParentTainted %v", got)
	}
	eventually(t, "LocalX509Trust with the parent's taint", func() bool {
		_, tainted := e.svc.LocalX509Trust()
		return slices.Contains(tainted, parentCA)
	})

	send()
	s.until("the parent's taint cleared", func() bool {
		return s.lastTainted != nil && slices.Equal(s.lastTainted.X509AuthorityIds, own)
	})
	if _, tainted := e.svc.LocalX509Trust(); slices.Contains(tainted, parentCA) {
		t.Fatalf("LocalX509Trust still holds the parent's cleared taint: %v", tainted)
	}
}
