package workloadapi_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"writ.dev/writ/internal/passconn"
	"writ.dev/writ/internal/pidns"
)

// The test binary doubles as a Workload API client in another process:
// started with envChild set, TestMain runs childMain instead of the tests.
const (
	envChild   = "WORKLOADAPI_TEST_CHILD" // "fetch" or "streams"
	envAddr    = "WORKLOADAPI_TEST_ADDR"
	envConns   = "WORKLOADAPI_TEST_CONNS"
	envStreams = "WORKLOADAPI_TEST_STREAMS" // per connection
)

func TestMain(m *testing.M) {
	pidns.HoldIfAsked()
	if mode := os.Getenv(envChild); mode != "" {
		os.Exit(childMain(mode))
	}
	code := m.Run()
	for _, dir := range []string{pubBinDir, writBinDir} {
		if dir != "" {
			os.RemoveAll(dir)
		}
	}
	os.Exit(code)
}

func childMain(mode string) int {
	addr := os.Getenv(envAddr)
	switch mode {
	case "fetch":
		return childFetch(addr)
	case "passconn":
		return childPassConn(addr)
	case "passhold":
		return childPassHold(addr)
	case "impostor":
		return childImpostor()
	case "flood":
		conns, err := strconv.Atoi(os.Getenv(envConns))
		if err != nil {
			fmt.Fprintln(os.Stderr, "child: bad count")
			return 2
		}
		return childFlood(addr, conns)
	case "streams":
		conns, err1 := strconv.Atoi(os.Getenv(envConns))
		streams, err2 := strconv.Atoi(os.Getenv(envStreams))
		if err1 != nil || err2 != nil {
			fmt.Fprintln(os.Stderr, "child: bad counts")
			return 2
		}
		return childStreams(addr, conns, streams)
	}
	fmt.Fprintln(os.Stderr, "child: unknown mode", mode)
	return 2
}

// childPassConn connects to the socket, passes the connection to the
// parent over fd 3 (SCM_RIGHTS), and exits.
func childPassConn(addr string) int {
	c, err := net.Dial("unix", strings.TrimPrefix(addr, "unix://"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	// Passed once the server has pinned this process.
	if err := passconn.Send(3, c.(*net.UnixConn)); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	return 0
}

// childFlood opens conns connections, each making one FetchX509SVID
// call, prints "denied <n> other <n>" (the calls refused with
// PermissionDenied, the others), and holds the connections until stdin
// closes: a caller without identity trying to take every slot.
func childFlood(addr string, conns int) int {
	ctx, cancel := context.WithTimeout(withHeader(context.Background()), 30*time.Second)
	defer cancel()
	var (
		wg            sync.WaitGroup
		mu            sync.Mutex
		denied, other int
	)
	for range conns {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			return 2
		}
		defer conn.Close()
		c := workload.NewSpiffeWorkloadAPIClient(conn)
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
			if err == nil {
				_, err = s.Recv()
			}
			mu.Lock()
			defer mu.Unlock()
			if status.Code(err) == codes.PermissionDenied {
				denied++
			} else {
				other++
			}
		}()
	}
	wg.Wait()
	fmt.Println("denied", denied, "other", other)
	io.Copy(io.Discard, bufio.NewReader(os.Stdin))
	return 0
}

// childPassHold connects to the socket twice, passes both connections
// to the parent over fd 3 (SCM_RIGHTS), and exits when fd 3 closes.
func childPassHold(addr string) int {
	for range 2 {
		c, err := net.Dial("unix", strings.TrimPrefix(addr, "unix://"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			return 2
		}
		if err := passconn.Send(3, c.(*net.UnixConn)); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			return 2
		}
	}
	io.Copy(io.Discard, os.NewFile(3, "ctl"))
	return 0
}

// childImpostor makes the calls of childFetch on the connection it
// inherited as fd 3, which another process opened, and holds on until
// stdin closes.
func childImpostor() int {
	f := os.NewFile(3, "conn")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	conn, err := passconn.Client(c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	defer conn.Close()
	fetch(conn)
	io.Copy(io.Discard, bufio.NewReader(os.Stdin))
	return 0
}

// childFetch calls each RPC once and prints "<rpc> <code>" lines.
func childFetch(addr string) int {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	defer conn.Close()
	fetch(conn)
	return 0
}

// fetch calls each RPC once on conn and prints "<rpc> <code>" lines
// ("x509 <code> <SVIDs>" for FetchX509SVID).
func fetch(conn *grpc.ClientConn) {
	c := workload.NewSpiffeWorkloadAPIClient(conn)
	ctx, cancel := context.WithTimeout(withHeader(context.Background()), 10*time.Second)
	defer cancel()
	code := func(err error) string { return status.Code(err).String() }

	s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err == nil {
		var resp *workload.X509SVIDResponse
		resp, err = s.Recv()
		if err == nil {
			fmt.Println("x509", code(nil), len(resp.GetSvids()))
		}
	}
	if err != nil {
		fmt.Println("x509", code(err), 0)
	}
	_, err = c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"a"}})
	fmt.Println("jwt", code(err))
	b, err := c.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
	if err == nil {
		_, err = b.Recv()
	}
	fmt.Println("bundles", code(err))
}

// childStreams opens streams FetchX509SVID streams on each of conns
// connections, receives the first message of each, prints "ready", and
// holds them until stdin closes.
func childStreams(addr string, conns, streams int) int {
	ctx, cancel := context.WithCancel(withHeader(context.Background()))
	defer cancel()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		fail error
	)
	for range conns {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			return 2
		}
		defer conn.Close()
		c := workload.NewSpiffeWorkloadAPIClient(conn)
		for range streams {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
				if err == nil {
					_, err = s.Recv()
				}
				if err != nil {
					mu.Lock()
					fail = err
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	if fail != nil {
		fmt.Fprintln(os.Stderr, "child:", fail)
		return 2
	}
	fmt.Println("ready")
	io.Copy(io.Discard, bufio.NewReader(os.Stdin))
	return 0
}
