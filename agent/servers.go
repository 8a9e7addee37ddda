package agent

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"time"

	"writ.dev/writ/internal/logkey"
)

// resolveTimeout bounds one lookup of a server's host name.
const resolveTimeout = 5 * time.Second

// Resolver looks up the addresses of a host name; *net.Resolver is one.
type Resolver interface {
	LookupHost(ctx context.Context, host string) ([]string, error)
}

// serverPicker chooses the server of each connection attempt: it goes
// round the configured servers in turn, from a random start so that
// agents spread over the servers, a host name counting as every address
// it resolves to. Names are resolved again at the start of each round,
// so servers added to or removed from DNS are followed. It is used only
// from Run's goroutine.
type serverPicker struct {
	addrs    []string // configured host:port, in order
	resolver Resolver
	log      *slog.Logger
	rand     func(n int) int

	round []string // this round's candidates
	next  int      // index in round of the next attempt
}

func newServerPicker(addrs []string, resolver Resolver, log *slog.Logger) *serverPicker {
	return &serverPicker{addrs: addrs, resolver: resolver, log: log, rand: rand.IntN}
}

// pick returns the address of the next attempt.
func (p *serverPicker) pick(ctx context.Context) string {
	if p.next >= len(p.round) {
		first := p.round == nil
		p.round = p.expand(ctx)
		p.next = 0
		if first {
			p.next = p.rand(len(p.round))
		}
	}
	addr := p.round[p.next]
	p.next++
	return addr
}

// again makes the next pick return the last one again.
func (p *serverPicker) again() {
	if p.next > 0 {
		p.next--
	}
}

// size is the number of candidates in the current round (at least 1).
func (p *serverPicker) size() int { return max(1, len(p.round)) }

// expand returns the candidates of a round: each configured address,
// with a host name replaced by the addresses it resolves to, without
// duplicates. A name that does not resolve is kept as it is, for the
// connection attempt to report. The result is never empty.
func (p *serverPicker) expand(ctx context.Context) []string {
	var out []string
	add := func(a string) {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	for _, addr := range p.addrs {
		host, port, err := net.SplitHostPort(addr)
		if err != nil || net.ParseIP(host) != nil {
			add(addr)
			continue
		}
		ips, err := p.lookup(ctx, host)
		if err != nil || len(ips) == 0 {
			p.log.Debug("cannot resolve the server's host name; trying it as it is", logkey.ServerAddress, addr, logkey.Error, err)
			add(addr)
			continue
		}
		for _, ip := range ips {
			add(net.JoinHostPort(ip, port))
		}
	}
	return out
}

func (p *serverPicker) lookup(ctx context.Context, host string) ([]string, error) {
	r := p.resolver
	if r == nil {
		r = net.DefaultResolver
	}
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	ips, err := r.LookupHost(ctx, host)
	slices.Sort(ips)
	return ips, err
}
