package revocationapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"writ.dev/writ/agent/revocation"
	"writ.dev/writ/agent/rotate"
	agentv1 "writ.dev/writ/ca/api/agent/v1"
	"writ.dev/writ/ca/clock"
	"writ.dev/writ/workloadapi"
)

// EndpointEnv is the environment variable that names the Workload API
// socket when ClientConfig.Address is empty.
const EndpointEnv = "SPIFFE_ENDPOINT_SOCKET"

// maxRecvMsgSize bounds a message from the agent (a full list).
const maxRecvMsgSize = 16 << 20

// DefaultBackoff spaces reconnections after a stream broke, unless
// ClientConfig.Backoff says otherwise.
var DefaultBackoff = rotate.Backoff{Base: 100 * time.Millisecond, Max: 10 * time.Second}

// ClientConfig configures a Client.
type ClientConfig struct {
	// Address is the agent's Workload API socket, "unix:///path"; empty
	// means $SPIFFE_ENDPOINT_SOCKET.
	Address string
	// Clock tells the time for expiry and backoff; nil means the system
	// clock.
	Clock clock.Clock
	// Logger receives stream failures. Nil discards them.
	Logger *slog.Logger
	// Backoff spaces reconnections; zero means DefaultBackoff.
	Backoff rotate.Backoff
}

// Client keeps a revocation list current from the agent's
// RevocationService, and answers Revoked from it locally.
type Client struct {
	addr    string
	backoff rotate.Backoff
	clk     clock.Clock
	log     *slog.Logger
	list    *revocation.List
	running atomic.Bool

	readyOnce sync.Once
	ready     chan struct{}
}

// NewClient returns a Client configured by cfg. It connects in Run.
func NewClient(cfg ClientConfig) (*Client, error) {
	addr := cfg.Address
	if addr == "" {
		addr = os.Getenv(EndpointEnv)
	}
	if !strings.HasPrefix(addr, "unix:///") {
		return nil, fmt.Errorf("%w: the agent address %q is not unix:///path (set %s)", ErrConfig, addr, EndpointEnv)
	}
	c := &Client{addr: addr, backoff: cfg.Backoff, clk: cfg.Clock, log: cfg.Logger, ready: make(chan struct{})}
	if c.backoff == (rotate.Backoff{}) {
		c.backoff = DefaultBackoff
	}
	if c.clk == nil {
		c.clk = clock.Real()
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.list = revocation.New(c.clk)
	return c, nil
}

// Revoked reports whether a token is revoked by the list last received
// (see revocation.List.Revoked).
func (c *Client) Revoked(jti, subject, clientID string, issuedAt time.Time) bool {
	return c.list.Revoked(jti, subject, clientID, issuedAt)
}

// List returns the list the Client keeps; Subscribe to it to learn of
// changes.
func (c *Client) List() *revocation.List { return c.list }

// Ready is closed once the first full list has arrived.
func (c *Client) Ready() <-chan struct{} { return c.ready }

// Run follows the agent's stream until ctx ends, reconnecting with
// backoff when it breaks, and drops revocations as they expire. It
// returns nil when ctx ends.
func (c *Client) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("revocationapi: client already running")
	}
	conn, err := grpc.NewClient(c.addr,
		append(workloadapi.SecurityHeaderDialOptions(),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgSize)))...)
	if err != nil {
		return fmt.Errorf("revocationapi: %w", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { _ = c.list.Run(ctx) })
	defer wg.Wait()
	defer cancel()
	api := agentv1.NewRevocationServiceClient(conn)
	failures := 0
	for {
		got, err := c.follow(ctx, api)
		if ctx.Err() != nil {
			return nil
		}
		if got {
			failures = 0
		}
		d := c.backoff.Delay(failures, rand.Float64())
		failures++
		c.log.Warn("revocation stream from the agent broke; keeping the last list", "error", err.Error(), "retry_in", d.String())
		t := c.clk.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		}
	}
}

// errPartialList: the agent broke off a full list sent in several
// messages, or sent more than maxPending; the stream is dropped and the
// last complete list kept.
var errPartialList = errors.New("revocationapi: the agent sent an incomplete or oversized full list")

// maxPending bounds a full list the client assembles from several
// messages.
const maxPending = 10_000_000

// follow runs one stream; got reports whether a message arrived.
func (c *Client) follow(ctx context.Context, api agentv1.RevocationServiceClient) (got bool, err error) {
	stream, err := api.WatchRevocations(ctx, &agentv1.WatchRevocationsRequest{}, grpc.WaitForReady(false))
	if err != nil {
		return false, err
	}
	// pending holds the parts of a full list sent in several messages.
	var pending []revocation.Revocation
	for {
		msg, err := stream.Recv()
		if err != nil {
			return got, err
		}
		if !msg.GetFull() && pending != nil {
			return got, errPartialList
		}
		rs := make([]revocation.Revocation, 0, len(msg.GetRevocations()))
		for _, w := range msg.GetRevocations() {
			r, err := revocation.FromUnix(w.GetJti(), w.GetClientId(), w.GetRevokedAt(), w.GetExpiresAt())
			if err != nil {
				continue
			}
			rs = append(rs, r)
		}
		if msg.GetFull() && msg.GetMore() {
			pending = append(pending, rs...)
			if len(pending) > maxPending {
				return got, errPartialList
			}
			continue
		}
		if msg.GetFull() {
			c.list.Replace(append(pending, rs...))
			pending = nil
			c.readyOnce.Do(func() { close(c.ready) })
		} else {
			c.list.Add(rs)
		}
		got = true
	}
}
