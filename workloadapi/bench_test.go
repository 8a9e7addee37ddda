package workloadapi_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/workloadapi"
)

// The benchmarks compare the Workload API with a stub server of the same
// service, on the same kind of socket, that answers every call with a
// fixed, precomputed response and attests nobody: the ratio of their
// throughputs is the cost of attestation, the cache and subscriptions.
//
//	go test -run '^$' -bench . -benchtime 2s ./workloadapi/

// stub is the SPIFFE Workload API answering fixed responses.
type stub struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	x509     *workload.X509SVIDResponse
	jwt      *workload.JWTSVIDResponse
	validate *workload.ValidateJWTSVIDResponse
}

func (s *stub) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	if err := stream.Send(s.x509); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

func (s *stub) FetchJWTSVID(context.Context, *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	return s.jwt, nil
}

func (s *stub) ValidateJWTSVID(context.Context, *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	return s.validate, nil
}

// startStub serves s on a new socket and returns its address.
func startStub(b *testing.B, s *stub, opts ...grpc.ServerOption) string {
	b.Helper()
	path := filepath.Join(tempDir(b), "stub")
	l, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	gs := grpc.NewServer(opts...)
	workload.RegisterSpiffeWorkloadAPIServer(gs, s)
	go gs.Serve(l)
	b.Cleanup(gs.Stop)
	return "unix://" + path
}

// benchFixture is a server with a caller entitled to n SVIDs, and a stub
// answering what the server answers.
type benchFixture struct {
	e        *env
	ids      []spiffeid.ID
	token    string // JWT-SVID of ids[0] for "db"
	stubAddr string
}

func newBenchFixture(b *testing.B, n int) *benchFixture {
	b.Helper()
	e := newEnv(b, withQuietLog())
	f := &benchFixture{e: e}
	for i := range n {
		f.ids = append(f.ids, e.add(fmt.Sprintf("/svc/%03d", i)).SPIFFEID)
	}
	ctx := withHeader(context.Background())
	c, _ := e.raw()
	s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		b.Fatal(err)
	}
	x509Resp, err := s.Recv()
	if err != nil {
		b.Fatal(err)
	}
	jwtResp, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"db"}, SpiffeId: f.ids[0].String()})
	if err != nil {
		b.Fatal(err)
	}
	f.token = jwtResp.Svids[0].Svid
	claims, _ := structpb.NewStruct(map[string]any{"sub": f.ids[0].String(), "aud": "db"})
	f.stubAddr = startStub(b, &stub{
		x509:     x509Resp,
		jwt:      jwtResp,
		validate: &workload.ValidateJWTSVIDResponse{SpiffeId: f.ids[0].String(), Claims: claims},
	})
	return f
}

// clients returns n go-spiffe clients of addr, each with its connection.
func clients(b *testing.B, addr string, n int) []*spiffewl.Client {
	b.Helper()
	out := make([]*spiffewl.Client, n)
	for i := range out {
		c, err := spiffewl.New(context.Background(), spiffewl.WithAddr(addr))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		out[i] = c
	}
	return out
}

// runCallers runs call b.N times over callers concurrent callers, each
// with its own client (connection), and reports calls per second.
func runCallers(b *testing.B, addr string, callers int, call func(*spiffewl.Client) error) {
	cs := clients(b, addr, callers)
	for _, c := range cs { // connect and warm up
		if err := call(c); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	if callers == 1 {
		for range b.N {
			if err := call(cs[0]); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		var next atomic.Int32
		b.SetParallelism((callers + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
		b.RunParallel(func(pb *testing.PB) {
			c := cs[int(next.Add(1)-1)%len(cs)]
			for pb.Next() {
				if err := call(c); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
}

func targets(f *benchFixture) []struct{ name, addr string } {
	return []struct{ name, addr string }{{"writ", f.e.addr}, {"stub", f.stubAddr}}
}

// BenchmarkFetchX509SVID: go-spiffe's FetchX509SVID (a stream opened,
// one message, closed), by 1 and 16 concurrent callers.
func BenchmarkFetchX509SVID(b *testing.B) {
	f := newBenchFixture(b, 1)
	ctx := context.Background()
	for _, callers := range []int{1, 16} {
		for _, t := range targets(f) {
			b.Run(fmt.Sprintf("%s/callers=%d", t.name, callers), func(b *testing.B) {
				runCallers(b, t.addr, callers, func(c *spiffewl.Client) error {
					_, err := c.FetchX509SVID(ctx)
					return err
				})
			})
		}
	}
}

// BenchmarkFetchX509SVIDs100: a caller entitled to 100 SVIDs fetches all.
func BenchmarkFetchX509SVIDs100(b *testing.B) {
	f := newBenchFixture(b, 100)
	ctx := context.Background()
	for _, t := range targets(f) {
		b.Run(t.name, func(b *testing.B) {
			runCallers(b, t.addr, 1, func(c *spiffewl.Client) error {
				svids, err := c.FetchX509SVIDs(ctx)
				if err == nil && len(svids) != 100 {
					err = fmt.Errorf("%d SVIDs", len(svids))
				}
				return err
			})
		})
	}
}

// BenchmarkFetchJWTSVID: a cached JWT-SVID.
func BenchmarkFetchJWTSVID(b *testing.B) {
	f := newBenchFixture(b, 1)
	ctx := context.Background()
	for _, callers := range []int{1, 16} {
		for _, t := range targets(f) {
			b.Run(fmt.Sprintf("%s/callers=%d", t.name, callers), func(b *testing.B) {
				runCallers(b, t.addr, callers, func(c *spiffewl.Client) error {
					_, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db", Subject: f.ids[0]})
					return err
				})
			})
		}
	}
}

// BenchmarkValidateJWTSVID: validation (an ECDSA P-256 verification).
func BenchmarkValidateJWTSVID(b *testing.B) {
	f := newBenchFixture(b, 1)
	ctx := context.Background()
	for _, callers := range []int{1, 16} {
		for _, t := range targets(f) {
			b.Run(fmt.Sprintf("%s/callers=%d", t.name, callers), func(b *testing.B) {
				runCallers(b, t.addr, callers, func(c *spiffewl.Client) error {
					_, err := c.ValidateJWTSVID(ctx, f.token, "db")
					return err
				})
			})
		}
	}
}

// BenchmarkStreamMemory: the server's memory per open FetchX509SVID
// stream (HeapInuse+StackInuse after GC), with the clients in a child
// process so that their memory is not counted. Streams are either
// multiplexed, 50 per connection, or one per connection (each with its
// pinned process). The server keeps the SVID of one entry. The stub,
// with the same transport buffer sizes, shows what gRPC itself costs. Run
// with -benchtime 1x.
func BenchmarkStreamMemory(b *testing.B) {
	for _, tc := range []struct {
		name           string
		conns, streams int
	}{
		{"streams=10000/per_conn=50", 200, 50},
		{"streams=2000/per_conn=1", 2000, 1},
	} {
		for _, target := range []string{"writ", "stub"} {
			b.Run(target+"/"+tc.name, func(b *testing.B) {
				e := newEnv(b, withQuietLog(), withConfig(func(c *workloadapi.Config) { c.MaxConnections, c.MaxConnectionsPerUID = tc.conns+16, tc.conns+16 }))
				e.add("/svc")
				addr := e.addr
				if target == "stub" {
					c, _ := e.raw()
					s, err := c.FetchX509SVID(withHeader(context.Background()), &workload.X509SVIDRequest{})
					if err != nil {
						b.Fatal(err)
					}
					resp, err := s.Recv()
					if err != nil {
						b.Fatal(err)
					}
					// The server's buffer sizes (server.go).
					addr = startStub(b, &stub{x509: resp}, grpc.ReadBufferSize(4<<10), grpc.WriteBufferSize(32<<10), grpc.SharedWriteBuffer(true))
				}
				for range b.N {
					measureStreams(b, addr, tc.conns, tc.streams)
				}
			})
		}
	}
}

func measureStreams(b *testing.B, addr string, conns, streams int) {
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	// unixattest caches the hash of an executable only once its ctime is
	// a few seconds old; a test binary just built would be hashed anew
	// for every connection.
	var st syscall.Stat_t
	if err := syscall.Stat(self, &st); err != nil {
		b.Fatal(err)
	}
	if wait := 4*time.Second - time.Since(time.Unix(st.Ctim.Unix())); wait > 0 {
		time.Sleep(wait)
	}
	runtime.GC()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	g0 := runtime.NumGoroutine()

	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), envChild+"=streams", envAddr+"="+addr,
		envConns+"="+strconv.Itoa(conns), envStreams+"="+strconv.Itoa(streams))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		b.Fatalf("child: %q %v", line, err)
	}
	opened := time.Since(start)
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&after)
	g1 := runtime.NumGoroutine()
	stdin.Close()
	cmd.Wait()

	n := float64(conns * streams)
	mem := float64(after.HeapInuse+after.StackInuse) - float64(before.HeapInuse+before.StackInuse)
	b.ReportMetric(mem/n, "B/stream")
	b.ReportMetric(float64(after.StackInuse-before.StackInuse)/n, "stack-B/stream")
	b.ReportMetric(float64(g1-g0)/n, "goroutines/stream")
	b.ReportMetric(opened.Seconds(), "s-to-open")
}

// BenchmarkFetchX509SVIDs101Among10000: a caller entitled to 101 SVIDs
// fetches all while the agent holds 10,000 other entries (and their
// SVIDs) for other workloads: the per-call cost should not grow with
// them.
func BenchmarkFetchX509SVIDs101Among10000(b *testing.B) {
	f := newBenchFixture(b, 101)
	var others []*entry.Entry
	for i := range 10000 {
		others = append(others, newEntry(b, fmt.Sprintf("/other/%05d", i), fmt.Sprintf("unix:uid:%d", 100000+i%500), fmt.Sprintf("unix:gid:%d", 200000+i)))
	}
	f.e.cache.Apply(svidcache.Update{Entries: others})
	for _, en := range others {
		f.e.sign(en, time.Hour)
	}
	ctx := context.Background()
	for _, t := range targets(f) {
		b.Run(t.name, func(b *testing.B) {
			runCallers(b, t.addr, 1, func(c *spiffewl.Client) error {
				svids, err := c.FetchX509SVIDs(ctx)
				if err == nil && len(svids) != 101 {
					err = fmt.Errorf("%d SVIDs", len(svids))
				}
				return err
			})
		})
	}
}
