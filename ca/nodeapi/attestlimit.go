package nodeapi

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"writ.dev/writ/internal/logkey"
)

// Defaults of the bounds on unauthenticated attestations (Config
// MaxAttestations and MaxAttestationsPerSource).
//
// An attestation normally takes a few milliseconds (a signature check
// and one datastore write), but Attest and AttestNode need no client
// certificate, and an AttestNode stream may wait for challenge answers
// for up to maxChallenges×challengeTimeout. Without bounds any peer
// could hold thousands of them open, each with its goroutines and
// buffers, and starve the agents that attest for real.
const (
	// DefaultMaxAttestations bounds the attestations running at once on
	// the server: 256 is far above what a fleet booting together needs
	// (each lasts milliseconds) and keeps a flood's cost to a few hundred
	// streams.
	DefaultMaxAttestations = 256
	// DefaultMaxAttestationsPerSource bounds those from one source IP
	// address: enough for the agents behind one NAT gateway or load
	// balancer to boot together, and a sixteenth of the server-wide
	// bound, so that at least 16 addresses are needed to exhaust it.
	DefaultMaxAttestationsPerSource = 16
)

// Messages of attestations refused for load.
const (
	msgTooManyAttestations           = "too many node attestations in progress on this server; retry later"
	msgTooManyAttestationsFromSource = "too many node attestations in progress from this address; retry later"
)

// attestLimiter bounds the unauthenticated attestations in progress, in
// all and per source address. It refuses the excess at once rather than
// queueing it, so that a flood holds no memory.
type attestLimiter struct {
	max, perSource int

	mu sync.Mutex // guards total and bySource
	// total is the number of attestations in progress.
	total int
	// bySource counts them by source address (the zero Addr for peers
	// without an IP address); sources with none are deleted.
	bySource map[netip.Addr]int
}

func newAttestLimiter(max, perSource int) *attestLimiter {
	return &attestLimiter{max: max, perSource: perSource, bySource: make(map[netip.Addr]int)}
}

// acquire takes a slot for an attestation from src. It returns the
// function that gives the slot back (call it once), or false and the
// bound that was reached.
func (l *attestLimiter) acquire(src netip.Addr) (release func(), ok bool, perSource bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.bySource[src] >= l.perSource:
		return nil, false, true
	case l.total >= l.max:
		return nil, false, false
	}
	l.total++
	l.bySource[src]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.total--
			if l.bySource[src]--; l.bySource[src] <= 0 {
				delete(l.bySource, src)
			}
		})
	}, true, false
}

// sourceAddr returns the source a call is counted under: its IPv4
// address (also when mapped into IPv6), the /64 network of its IPv6
// address (a single host is commonly given a whole /64, so counting each
// of its addresses apart would let it alone fill the server-wide bound),
// or the zero Addr if its peer has no IP address (a Unix socket, an
// in-memory connection): all such peers share one per-source bound.
func sourceAddr(ctx context.Context) netip.Addr {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return netip.Addr{}
	}
	var a netip.Addr
	if ta, ok := p.Addr.(*net.TCPAddr); ok {
		a = ta.AddrPort().Addr()
	} else if ap, err := netip.ParseAddrPort(p.Addr.String()); err == nil {
		a = ap.Addr()
	} else {
		return netip.Addr{}
	}
	a = a.Unmap().WithZone("")
	if a.Is6() {
		return netip.PrefixFrom(a, 64).Masked().Addr()
	}
	return a
}

// admitAttestation takes an attestation slot for the call in ctx, or
// refuses it with ResourceExhausted (logged at warn) if a bound is
// reached. The caller gives the slot back with release once the call
// has ended.
func (s *Service) admitAttestation(ctx context.Context, method string) (release func(), err error) {
	release, ok, perSource := s.attestLimit.acquire(sourceAddr(ctx))
	if ok {
		return release, nil
	}
	limit, msg, reason := s.attestLimit.max, msgTooManyAttestations, "server-wide bound reached"
	if perSource {
		limit, msg, reason = s.attestLimit.perSource, msgTooManyAttestationsFromSource, "per-source bound reached"
	}
	s.log.LogAttrs(ctx, slog.LevelWarn, "node attestation refused: too many in progress", peerAddr(ctx), slog.String(logkey.Method, method), slog.String(logkey.Reason, reason), slog.Int("limit", limit))
	return nil, busyError(fmt.Sprintf("%s (at most %d)", msg, limit))
}

// attestRetryDelay is the RetryInfo delay of an attestation refused for
// load: about the time a few attestations take.
const attestRetryDelay = time.Second

// busyError is a ResourceExhausted status carrying a RetryInfo detail,
// which tells agents that the refusal is for load and to retry later
// (ResourceExhausted alone also stands for failures not worth a retry,
// such as a message over the size limit).
func busyError(msg string) error {
	st := status.New(codes.ResourceExhausted, msg)
	if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(attestRetryDelay)}); err == nil {
		st = d
	}
	return st.Err()
}
