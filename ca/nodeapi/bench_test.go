package nodeapi_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/entry"
)

// BenchmarkBatchSign measures BatchSignX509SVID over TLS on loopback, per
// SVID, for several batch sizes. CSR checks and signing are included;
// key generation (the agent's) is not.
func BenchmarkBatchSign(b *testing.B) {
	for _, size := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			e := newEnv(b, envOptions{discardLogs: true})
			a := e.attest(agentA)
			en := e.createEntry("spiffe://example.org/w", agentA, func(en *entry.Entry) { en.DNSNames = []string{"w.example.org"} })
			csr := newCSR(b, newKey(b))
			req := &nodev1.BatchSignX509SVIDRequest{Requests: make([]*nodev1.X509SVIDRequest, size)}
			for i := range req.Requests {
				req.Requests[i] = &nodev1.X509SVIDRequest{EntryId: en.ID, Csr: csr}
			}
			ctx := context.Background()
			n := 0
			for b.Loop() {
				resp, err := a.client.BatchSignX509SVID(ctx, req)
				if err != nil || resp.Results[size-1].Status.GetCode() != 0 {
					b.Fatalf("%v %v", err, resp.GetResults()[size-1].GetStatus())
				}
				n += size
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/svid")
		})
	}
}

// BenchmarkPropagation measures, with 10,000 entries registered (1,000
// under each of 10 agents, each with an open Sync stream), the time from
// CreateEntries returning to the Sync message that carries the new entry
// arriving at the agent's client ("sync"), and to the agent holding a
// signed X.509-SVID for it after one BatchSignX509SVID call ("svid").
func BenchmarkPropagation(b *testing.B) {
	const (
		agents   = 10
		perAgent = 1000
	)
	e := newEnv(b, envOptions{discardLogs: true})
	var all []*agent
	for i := range agents {
		all = append(all, e.attest(fmt.Sprintf("spiffe://example.org/writ/agent/%d", i)))
	}
	ctx := context.Background()
	for i, a := range all {
		batch := make([]*entry.Entry, perAgent)
		for j := range batch {
			batch[j] = &entry.Entry{
				SPIFFEID:  spiffeid.RequireFromString(fmt.Sprintf("spiffe://example.org/w/%d/%d", i, j)),
				ParentID:  a.id,
				Selectors: []entry.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", j)}},
			}
		}
		if _, err := e.store.CreateEntries(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	// Every agent streams; the others' streams are drained and ignored.
	type arrival struct {
		id string
		at time.Time
	}
	arrivals := make(chan arrival, 1024)
	for i, a := range all {
		s := e.sync(a)
		m := s.next()
		if !m.Full || len(m.Entries) != perAgent {
			b.Fatalf("agent %d: first message has %d entries", i, len(m.Entries))
		}
		go func() {
			for {
				var m *nodev1.SyncResponse
				select {
				case m = <-s.msgs:
				case <-s.done:
					return
				}
				at := time.Now()
				if i != 0 {
					continue
				}
				for _, en := range m.Entries {
					select {
					case arrivals <- arrival{en.Id, at}:
					case <-s.done:
						return
					}
				}
			}
		}()
	}
	bench := all[0]
	csr := newCSR(b, newKey(b))
	var syncLat, svidLat []time.Duration
	n := 0
	for b.Loop() {
		n++
		en := &entry.Entry{
			SPIFFEID:  spiffeid.RequireFromString(fmt.Sprintf("spiffe://example.org/new/%d", n)),
			ParentID:  bench.id,
			Selectors: []entry.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", 100000+n)}},
		}
		res, err := e.store.CreateEntries(ctx, []*entry.Entry{en})
		if err != nil || res[0].Err != nil {
			b.Fatal(err, res[0].Err)
		}
		written := time.Now()
		id := res[0].Entry.ID
		var got time.Time
		for got.IsZero() {
			select {
			case a := <-arrivals:
				if a.id == id {
					got = a.at
				}
			case <-time.After(5 * time.Second):
				b.Fatalf("entry %d not streamed after 5s", n)
			}
		}
		resp, err := bench.client.BatchSignX509SVID(ctx, &nodev1.BatchSignX509SVIDRequest{Requests: []*nodev1.X509SVIDRequest{{EntryId: id, Csr: csr}}})
		if err != nil || resp.Results[0].Status.GetCode() != 0 {
			b.Fatalf("sign: %v %v", err, resp)
		}
		signed := time.Now()
		// The stream can beat CreateEntries' return to the caller.
		syncLat = append(syncLat, max(got.Sub(written), 0))
		svidLat = append(svidLat, signed.Sub(written))
	}
	report := func(name string, d []time.Duration) {
		slices.Sort(d)
		q := func(p float64) float64 { return float64(d[int(p*float64(len(d)-1))].Microseconds()) / 1000 }
		b.ReportMetric(q(0.50), name+"-p50-ms")
		b.ReportMetric(q(0.99), name+"-p99-ms")
	}
	report("sync", syncLat)
	report("svid", svidLat)
}
