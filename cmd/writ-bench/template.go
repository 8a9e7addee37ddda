package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
)

// Identity templates: many distinct callers served by one template entry.
//
// Callers are simulated by distinct executable paths, not users: N hard
// links to one copy of this program (one inode, so the agent hashes it
// once), each run once as a child process under the benchmark's own uid.
// Each link is a distinct unix:path selector, so the template
// spiffe://bench.test/tmpl/{{unix.path | base}} fills a distinct ID for
// each. The child times its first FetchX509SVID from dialing the socket
// to the response holding its SVID: attestation, the template filled, one
// batched signing round trip to the server (callers run tmplConcurrency
// at a time, so their signings share batches).
const (
	figTmplP50     = "template.first_fetch.p50"
	figTmplP99     = "template.first_fetch.p99"
	figTmplRSS     = "template.memory.agent.rss"
	figTmplEntries = "template.server_entries"

	tmplChild       = "tmplfetch"
	tmplPrefix      = "/tmpl"
	tmplConcurrency = 16
	tmplLatLine     = "latency_us "
)

func templateFigures(cfg Config, add func(name, unit, desc string, ref *Reference, tgt *Target)) {
	who := fmt.Sprintf("%s distinct callers (one process per hard link of one executable, each a distinct unix:path, %d at a time) served by one template entry on one agent", count(cfg.TemplateCallers), tmplConcurrency)
	add(figTmplP50, unitMS, "first FetchX509SVID of a caller, dial to SVID (attestation, template filled, signed in a batch), "+who+": median", nil, nil)
	add(figTmplP99, unitMS, "the same: 99th percentile", nil, nil)
	add(figTmplRSS, unitMiB, "agent RSS (VmRSS) after "+who+", every SVID kept (--svid-cache-size above their number)", nil, nil)
	add(figTmplEntries, "entries", "entries the server stores for "+who, nil, nil)
}

// measureTemplates runs the identity template case on a new pair of
// server and agent.
func (b *bench) measureTemplates(ctx context.Context, bin string) error {
	n := b.cfg.TemplateCallers
	b.prog.phase(fmt.Sprintf("templates: %s distinct callers of one template entry", count(n)))
	w, err := b.startPair(ctx, bin, "T", "--svid-cache-size", strconv.Itoa(2*n+1000))
	if err != nil {
		return err
	}
	defer w.close()
	// The children reach the socket and the links.
	if err := os.Chmod(filepath.Join(b.tmp, "T"), 0o711); err != nil {
		return err
	}
	links, err := b.makeCallerLinks(filepath.Join(b.tmp, "T", "bin"), n)
	if err != nil {
		return err
	}
	tmpl := &adminv1.Entry{
		Template:  "spiffe://" + benchTD.Name() + tmplPrefix + "/{{unix.path | base}}",
		ParentId:  agentID,
		Selectors: []string{fmt.Sprintf("unix:uid:%d", w.uid)},
	}
	if _, _, err := w.create(ctx, []*adminv1.Entry{tmpl}, 1); err != nil {
		return err
	}
	err = waitFor(ctx, socketWait, "the Workload API socket", func() (bool, error) { return isSocket(w.wlSock), nil }, w.server, w.agent)
	if err != nil {
		return err
	}
	// A link is a new ctime for the inode: let it settle so that the
	// agent hashes the executable once, not per caller.
	if err := sleepCtx(ctx, 4*time.Second); err != nil {
		return err
	}

	lat := make([]time.Duration, 0, n)
	var (
		mu    sync.Mutex // guards lat and first
		first error
		wg    sync.WaitGroup
	)
	next := make(chan string)
	start := time.Now()
	for range tmplConcurrency {
		wg.Go(func() {
			for link := range next {
				d, err := runCaller(ctx, link, w.wlSock, b.cfg.Timeout)
				mu.Lock()
				if err != nil && first == nil {
					first = err
				}
				if err == nil {
					lat = append(lat, d)
				}
				mu.Unlock()
			}
		})
	}
	for _, l := range links {
		mu.Lock()
		failed := first != nil
		mu.Unlock()
		if failed || ctx.Err() != nil {
			break
		}
		next <- l
	}
	close(next)
	wg.Wait()
	if first != nil {
		return first
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	b.prog.printf("%s callers served in %s", count(len(lat)), time.Since(start).Round(time.Millisecond))
	sum, err := durationsMS(lat).Summarize()
	if err != nil {
		return err
	}
	if _, err := waitIdle(ctx, idleQuiet, idleMax, w.server.pid(), w.agent.pid()); err != nil {
		return err
	}
	mem, err := readMem(w.agent.pid())
	if err != nil {
		return err
	}
	stored, err := w.countEntries(ctx)
	if err != nil {
		return err
	}
	params := map[string]int{"callers": n, "concurrency": tmplConcurrency}
	b.set(figTmplP50, sum.P50, sum.N, params)
	b.set(figTmplP99, sum.P99, sum.N, params)
	b.set(figTmplRSS, mem.RSS, 0, params)
	b.set(figTmplEntries, float64(stored), 0, params)
	b.prog.printf("first fetch of %s template callers: p50 %s ms, p99 %s ms; agent RSS %.1f MiB; server stores %d entries",
		count(n), msNum(sum.P50), msNum(sum.P99), mem.RSS, stored)
	return nil
}

// makeCallerLinks copies this executable into dir and makes n hard
// links to the copy, c0 to c<n-1>, readable and executable by all.
func (b *bench) makeCallerLinks(dir string, n int) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	src, err := os.Open(self)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	orig := filepath.Join(dir, "caller")
	dst, err := os.OpenFile(orig, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		return nil, err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return nil, err
	}
	if err := dst.Close(); err != nil {
		return nil, err
	}
	links := make([]string, n)
	for i := range links {
		links[i] = filepath.Join(dir, "c"+strconv.Itoa(i))
		if err := os.Link(orig, links[i]); err != nil {
			return nil, err
		}
	}
	return links, nil
}

// runCaller runs one caller and returns the latency it measured.
func runCaller(ctx context.Context, link, socket string, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, link)
	cmd.Env = append(childEnvironment(), childEnv+"="+tmplChild, childSocketEnv+"="+socket, childCountEnv+"=1")
	var errb bytes.Buffer
	cmd.Stderr = &errb
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("caller %s: %w: %s", filepath.Base(link), err, strings.TrimSpace(errb.String()))
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), tmplLatLine); ok {
			us, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("caller %s: %w", filepath.Base(link), err)
			}
			return time.Duration(us) * time.Microsecond, nil
		}
	}
	return 0, fmt.Errorf("caller %s printed no latency", filepath.Base(link))
}

// runTemplateCaller is the caller child: it asks the Workload API at
// socket for its X.509-SVIDs and prints how long the first response
// holding the ID the template fills from its path took.
func runTemplateCaller(socket string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	want := "spiffe://" + benchTD.Name() + tmplPrefix + "/" + filepath.Base(exe)
	ctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(context.Background(), metadata.Pairs("workload.spiffe.io", "true")), time.Minute)
	defer cancel()
	start := time.Now()
	cc, err := grpc.NewClient("unix:"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	stream, err := workload.NewSpiffeWorkloadAPIClient(cc).FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		for _, s := range resp.GetSvids() {
			if s.GetSpiffeId() == want {
				fmt.Printf("%s%d\n", tmplLatLine, time.Since(start).Microseconds())
				return nil
			}
		}
		if len(resp.GetSvids()) > 0 {
			return errors.New("the response lacks the ID the template fills")
		}
	}
}

// countEntries returns how many entries the server stores.
func (w *writEnv) countEntries(ctx context.Context) (int, error) {
	stream, err := w.entries.ListEntries(ctx, &adminv1.ListEntriesRequest{})
	if err != nil {
		return 0, err
	}
	n := 0
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return 0, err
		}
		n += len(resp.GetEntries())
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
