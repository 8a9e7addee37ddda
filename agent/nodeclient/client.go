package nodeclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/x509ca"
)

// Timeouts and limits.
const (
	// ServerPath is the path of the server's SPIFFE ID.
	ServerPath = "/writ/server"
	// SignTimeout bounds SignJWT and the base of BatchSign's deadline.
	SignTimeout = 2 * time.Second
	// perItemTimeout is added to BatchSign's deadline per request.
	perItemTimeout = 10 * time.Millisecond
	// JWTConnectTimeout is how long SignJWT waits for a connection.
	JWTConnectTimeout = 500 * time.Millisecond
	// CallTimeout bounds Attest and RenewAgent.
	CallTimeout = 10 * time.Second
	// ConnectTimeout bounds one connection attempt (TCP and TLS).
	ConnectTimeout = 5 * time.Second
	// MaxRecvMsgSize bounds a message from the server: a full Sync
	// message of tens of thousands of entries fits.
	MaxRecvMsgSize = 64 << 20
	// keepaliveTime: not more often than gRPC servers allow by default
	// (5 minutes), so a half-open connection is found eventually.
	keepaliveTime    = 5 * time.Minute
	keepaliveTimeout = 20 * time.Second
	// streamWindow and connWindow are the flow-control windows of the
	// server's answers: a full Sync message of tens of MiB still
	// arrives at a MiB per round trip.
	streamWindow = 1 << 20
	connWindow   = 4 << 20
)

// Errors callers branch on; see the package documentation.
var (
	ErrUnavailable      = errors.New("server unavailable")
	ErrServerNotTrusted = errors.New("server not authenticated")
	ErrPermissionDenied = errors.New("permission denied by server")
	ErrProtocol         = errors.New("malformed answer from server")
	// ErrBusy: the server refused the call for load (ResourceExhausted
	// with a RetryInfo detail), as it refuses attestations beyond its
	// bounds; retry later.
	ErrBusy = errors.New("server busy")
	// ErrClosed: the call failed because the Client was closed before
	// or during it. It comes wrapped with ErrUnavailable: the server
	// may answer the same call on another connection.
	ErrClosed = errors.New("client closed")
)

// ServerID returns the SPIFFE ID the server of trust domain td must
// present.
func ServerID(td spiffeid.TrustDomain) spiffeid.ID {
	id, err := spiffeid.FromPath(td, ServerPath)
	if err != nil {
		panic("nodeclient: server ID: " + err.Error()) // td is valid
	}
	return id
}

// Config configures a Client.
type Config struct {
	// Address is the server's host:port.
	Address     string
	TrustDomain spiffeid.TrustDomain
	// Authorities returns the X.509 authorities the server's certificate
	// must chain to. It is called at each handshake. Required unless
	// InsecureBootstrap.
	Authorities func() []*x509.Certificate
	// InsecureBootstrap skips authenticating the server. It is only for
	// the first Attest of an agent started with --insecure-bootstrap.
	InsecureBootstrap bool
	// Certificate, when set and holding a certificate, is presented as
	// the client certificate on each new connection.
	Certificate *atomic.Pointer[tls.Certificate]
	// Clock is the time server certificates are checked at.
	Clock clock.Clock
	// LocalAddr, when set, is the local address connections are made
	// from (as for a host with several addresses); otherwise the system
	// chooses, and gRPC's proxy settings apply.
	LocalAddr *net.TCPAddr
}

// Client is a connection to the node API.
type Client struct {
	cfg      Config
	serverID spiffeid.ID
	conn     *grpc.ClientConn
	node     nodev1.NodeServiceClient
	// verifyErr is the last server authentication failure.
	verifyErr atomic.Pointer[error]
	// noBatchJWT: the server answered BatchSignJWTSVID with
	// Unimplemented; BatchSignJWT uses SignJWTSVID.
	noBatchJWT atomic.Bool
	// closed is set by Close, before the connection is closed.
	closed atomic.Bool
}

// New returns a client of the server at cfg.Address. It does not connect:
// the first call does.
func New(cfg Config) (*Client, error) {
	if cfg.Address == "" {
		return nil, errors.New("nodeclient: no server address")
	}
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("nodeclient: no trust domain")
	}
	if cfg.Authorities == nil && !cfg.InsecureBootstrap {
		return nil, errors.New("nodeclient: no authorities to authenticate the server with")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	c := &Client{cfg: cfg, serverID: ServerID(cfg.TrustDomain)}
	tlsConf := &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Verification is done in VerifyConnection: the server's chain
		// against the trust domain's authorities and its SPIFFE ID,
		// neither of which the default (Web PKI) verification knows.
		InsecureSkipVerify:   true, //nolint:gosec // see VerifyConnection
		VerifyConnection:     c.verifyServer,
		GetClientCertificate: c.clientCertificate,
		Time:                 cfg.Clock.Now,
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxRecvMsgSize)),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			MinConnectTimeout: ConnectTimeout,
		}),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: keepaliveTime, Timeout: keepaliveTimeout}),
		// Fixed flow-control windows turn off gRPC's bandwidth-delay
		// estimation, which answers each response with a ping (two
		// more writes and wake-ups per call on each side).
		grpc.WithInitialWindowSize(streamWindow),
		grpc.WithInitialConnWindowSize(connWindow),
	}
	if cfg.LocalAddr != nil {
		d := &net.Dialer{LocalAddr: cfg.LocalAddr}
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		}))
	}
	conn, err := grpc.NewClient(cfg.Address, opts...)
	if err != nil {
		return nil, fmt.Errorf("nodeclient: server address %q: %w", cfg.Address, err)
	}
	c.conn = conn
	c.node = nodev1.NewNodeServiceClient(conn)
	return c, nil
}

// Close closes the connection. It is idempotent. Calls in flight, and
// calls made afterwards, fail with an error wrapping ErrClosed and
// ErrUnavailable.
func (c *Client) Close() error {
	c.closed.Store(true)
	err := c.conn.Close()
	if status.Code(err) == codes.Canceled {
		return nil // already closed
	}
	return err
}

func (c *Client) clientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	if c.cfg.Certificate != nil {
		if cert := c.cfg.Certificate.Load(); cert != nil {
			return cert, nil
		}
	}
	return &tls.Certificate{}, nil // no certificate
}

func (c *Client) verifyServer(cs tls.ConnectionState) error {
	if c.cfg.InsecureBootstrap {
		return nil
	}
	err := c.checkServer(cs.PeerCertificates)
	if err != nil {
		c.verifyErr.Store(&err)
	}
	return err
}

func (c *Client) checkServer(chain []*x509.Certificate) error {
	if len(chain) == 0 {
		return fmt.Errorf("%w: no certificate", ErrServerNotTrusted)
	}
	id, err := x509ca.VerifyX509SVID(chain, c.cfg.Authorities(), c.cfg.Clock.Now())
	if err != nil {
		return fmt.Errorf("%w: %w", ErrServerNotTrusted, err)
	}
	if id != c.serverID {
		return fmt.Errorf("%w: it presents SPIFFE ID %s, want %s", ErrServerNotTrusted, id, c.serverID)
	}
	return nil
}

// mapError classifies an RPC error. The result keeps the gRPC status
// (status.Code works on it) and wraps one of the package's sentinels
// where one applies.
func (c *Client) mapError(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled) {
		return ctx.Err()
	}
	st := status.Convert(err)
	if c.closed.Load() && (st.Code() == codes.Canceled || st.Code() == codes.Unavailable) {
		// The connection was closed under the call ("the client
		// connection is closing"), or before it.
		return fmt.Errorf("%w: %w: %w", ErrUnavailable, ErrClosed, status.Error(codes.Unavailable, st.Message()))
	}
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded:
		if p := c.verifyErr.Load(); p != nil {
			return fmt.Errorf("%w (%w)", *p, status.Error(codes.Unavailable, st.Message()))
		}
		return fmt.Errorf("%w: %w", ErrUnavailable, status.Error(codes.Unavailable, st.Message()))
	case codes.PermissionDenied, codes.Unauthenticated:
		return fmt.Errorf("%w: %w", ErrPermissionDenied, err)
	case codes.ResourceExhausted:
		if retryLater(st) {
			return fmt.Errorf("%w: %w", ErrBusy, err)
		}
	}
	return err
}

// retryLater reports whether st carries a RetryInfo detail: the server
// refused the call for load. Other ResourceExhausted failures (a message
// over the size limit, a quota) would fail again.
func retryLater(st *status.Status) bool {
	for _, d := range st.Details() {
		if _, ok := d.(*errdetails.RetryInfo); ok {
			return true
		}
	}
	return false
}

// WaitReady waits up to timeout for a ready connection, starting one if
// needed. It fails at once, with an error wrapping ErrUnavailable, if the
// last attempt failed.
func (c *Client) WaitReady(ctx context.Context, timeout time.Duration) error {
	// A ready connection, the usual case, is only looked at: Connect
	// would hand a task to the balancer's goroutine on every call (a
	// goroutine wake-up per RPC), and the timeout a timer.
	if c.conn.GetState() == connectivity.Ready {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c.conn.Connect()
	for {
		s := c.conn.GetState()
		switch s {
		case connectivity.Ready:
			return nil
		case connectivity.TransientFailure, connectivity.Shutdown:
			return c.mapError(ctx, status.Errorf(codes.Unavailable, "no connection to the server (%s)", s))
		}
		if !c.conn.WaitForStateChange(ctx, s) {
			if err := context.Cause(ctx); errors.Is(err, context.Canceled) {
				return err
			}
			return c.mapError(ctx, status.Errorf(codes.Unavailable, "no connection to the server within %s", timeout))
		}
	}
}

// AttestResult is what Attest returns.
type AttestResult struct {
	// Chain is the agent's X.509-SVID chain, leaf first (DER).
	Chain [][]byte
	// Bundle is the trust domain's SPIFFE bundle (JSON).
	Bundle []byte
	// NodeSelectors are the node selectors the server recorded for the
	// agent (AttestNode only), unparsed.
	NodeSelectors []string
}

// maxChallenges bounds the challenges AttestNode answers.
const maxChallenges = 4

// AttestNode attests with the node attestor typ: it sends payload and the
// CSR (DER), answers each challenge with respond, and returns the SVID.
// Nothing is sent before the server is authenticated.
func (c *Client) AttestNode(ctx context.Context, typ string, payload, csr []byte, respond func(ctx context.Context, challenge []byte) ([]byte, error)) (*AttestResult, error) {
	cctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	stream, err := c.node.AttestNode(cctx)
	if err != nil {
		return nil, c.mapError(ctx, err)
	}
	if err := stream.Send(&nodev1.AttestNodeRequest{AttestationType: typ, Payload: payload, Csr: csr}); err != nil {
		_, err = stream.Recv() // the status explains a failed Send
		return nil, c.mapError(ctx, err)
	}
	for n := 0; ; n++ {
		resp, err := stream.Recv()
		if err != nil {
			return nil, c.mapError(ctx, err)
		}
		if ch := resp.GetChallenge(); len(ch) > 0 {
			if n >= maxChallenges {
				return nil, fmt.Errorf("%w: more than %d attestation challenges", ErrProtocol, maxChallenges)
			}
			r, err := respond(cctx, ch)
			if err != nil {
				return nil, fmt.Errorf("answer the %s challenge: %w", typ, err)
			}
			if err := stream.Send(&nodev1.AttestNodeRequest{ChallengeResponse: r}); err != nil {
				_, err = stream.Recv()
				return nil, c.mapError(ctx, err)
			}
			continue
		}
		_ = stream.CloseSend()
		if len(resp.GetSvidChain()) == 0 || len(resp.GetBundle()) == 0 {
			return nil, fmt.Errorf("%w: attestation answer without SVID or bundle", ErrProtocol)
		}
		return &AttestResult{Chain: resp.GetSvidChain(), Bundle: resp.GetBundle(), NodeSelectors: resp.GetNodeSelectors()}, nil
	}
}

// Attest redeems joinToken with a CSR (DER) for the agent's key.
func (c *Client) Attest(ctx context.Context, joinToken string, csr []byte) (*AttestResult, error) {
	cctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	resp, err := c.node.Attest(cctx, &nodev1.AttestRequest{JoinToken: joinToken, Csr: csr})
	if err != nil {
		return nil, c.mapError(ctx, err)
	}
	if len(resp.GetSvidChain()) == 0 || len(resp.GetBundle()) == 0 {
		return nil, fmt.Errorf("%w: attestation answer without SVID or bundle", ErrProtocol)
	}
	return &AttestResult{Chain: resp.GetSvidChain(), Bundle: resp.GetBundle()}, nil
}

// RenewAgent asks for a new agent X.509-SVID for the key of csr (DER) and
// returns its chain, leaf first.
func (c *Client) RenewAgent(ctx context.Context, csr []byte) ([][]byte, error) {
	cctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	resp, err := c.node.RenewAgent(cctx, &nodev1.RenewAgentRequest{Csr: csr})
	if err != nil {
		return nil, c.mapError(ctx, err)
	}
	if len(resp.GetSvidChain()) == 0 {
		return nil, fmt.Errorf("%w: renewal answer without SVID", ErrProtocol)
	}
	return resp.GetSvidChain(), nil
}

// SyncStream is an open Sync call.
type SyncStream struct {
	c      *Client
	ctx    context.Context
	stream grpc.ServerStreamingClient[nodev1.SyncResponse]
}

// Sync opens the entry stream. It ends when ctx does.
func (c *Client) Sync(ctx context.Context) (*SyncStream, error) {
	s, err := c.node.Sync(ctx, &nodev1.SyncRequest{})
	if err != nil {
		return nil, c.mapError(ctx, err)
	}
	return &SyncStream{c: c, ctx: ctx, stream: s}, nil
}

// Recv returns the next message. The messages are the server's, unparsed:
// the caller parses every field with the ca/entry parsers.
func (s *SyncStream) Recv() (*nodev1.SyncResponse, error) {
	m, err := s.stream.Recv()
	if err != nil {
		return nil, s.c.mapError(s.ctx, err)
	}
	return m, nil
}

// SignRequest asks for an X.509-SVID for an entry.
type SignRequest struct {
	EntryID string
	CSR     []byte // DER
}

// SignResult is the answer to one SignRequest.
type SignResult struct {
	EntryID string
	// Chain is the X.509-SVID chain, leaf first (DER), when Err is nil.
	Chain [][]byte
	// Err is the server's refusal of this request, as a gRPC status
	// error, mapped like call errors.
	Err error
}

// BatchSign asks for X.509-SVIDs for reqs in one call and returns one
// result per request, in order. Its deadline is SignTimeout plus 10 ms
// per request.
func (c *Client) BatchSign(ctx context.Context, reqs []SignRequest) ([]SignResult, error) {
	in := &nodev1.BatchSignX509SVIDRequest{Requests: make([]*nodev1.X509SVIDRequest, len(reqs))}
	for i, r := range reqs {
		in.Requests[i] = &nodev1.X509SVIDRequest{EntryId: r.EntryID, Csr: r.CSR}
		// A template instance: the template's entry ID and the ID filled.
		if tid, sid, ok := entry.SplitInstanceID(r.EntryID); ok {
			in.Requests[i].EntryId, in.Requests[i].SpiffeId = tid, sid
		}
	}
	cctx, cancel := context.WithTimeout(ctx, SignTimeout+time.Duration(len(reqs))*perItemTimeout)
	defer cancel()
	resp, err := c.node.BatchSignX509SVID(cctx, in)
	if err != nil {
		return nil, c.mapError(ctx, err)
	}
	results := resp.GetResults()
	if len(results) != len(reqs) {
		return nil, fmt.Errorf("%w: %d results for %d requests", ErrProtocol, len(results), len(reqs))
	}
	out := make([]SignResult, len(reqs))
	for i, r := range results {
		out[i] = SignResult{EntryID: reqs[i].EntryID}
		if r.GetEntryId() != in.Requests[i].GetEntryId() {
			out[i].Err = fmt.Errorf("%w: result %d is for entry %q, want %q", ErrProtocol, i, r.GetEntryId(), reqs[i].EntryID)
			continue
		}
		if code := codes.Code(r.GetStatus().GetCode()); code != codes.OK {
			out[i].Err = c.mapError(ctx, status.Error(code, r.GetStatus().GetMessage()))
			continue
		}
		if len(r.GetSvidChain()) == 0 {
			out[i].Err = fmt.Errorf("%w: result %d has no SVID", ErrProtocol, i)
			continue
		}
		out[i].Chain = r.GetSvidChain()
	}
	return out, nil
}

// SignJWT asks for a JWT-SVID for an entry. It fails with ErrUnavailable
// within JWTConnectTimeout when no connection is ready, and within
// SignTimeout in all.
func (c *Client) SignJWT(ctx context.Context, entryID string, audience []string) (string, time.Time, error) {
	if err := c.WaitReady(ctx, JWTConnectTimeout); err != nil {
		return "", time.Time{}, err
	}
	cctx, cancel := context.WithTimeout(ctx, SignTimeout)
	defer cancel()
	req := &nodev1.SignJWTSVIDRequest{EntryId: entryID, Audience: audience}
	if tid, sid, ok := entry.SplitInstanceID(entryID); ok {
		req.EntryId, req.SpiffeId = tid, sid
	}
	resp, err := c.node.SignJWTSVID(cctx, req)
	if err != nil {
		return "", time.Time{}, c.mapError(ctx, err)
	}
	if resp.GetToken() == "" {
		return "", time.Time{}, fmt.Errorf("%w: empty JWT-SVID", ErrProtocol)
	}
	return resp.GetToken(), time.Unix(resp.GetExpiresAt(), 0), nil
}

// TemplateReport is what one template entry issues on the agent.
type TemplateReport struct {
	EntryID   string
	SPIFFEIDs []string // at most MaxReportedIDs are sent
	Count     int
}

// MaxReportedIDs bounds the SPIFFE IDs sent per template.
const MaxReportedIDs = 1000

// ReportTemplates sends the agent's complete template report.
func (c *Client) ReportTemplates(ctx context.Context, reports []TemplateReport) error {
	in := &nodev1.ReportTemplatesRequest{Templates: make([]*nodev1.TemplateReport, len(reports))}
	for i, r := range reports {
		ids := r.SPIFFEIDs
		if len(ids) > MaxReportedIDs {
			ids = ids[:MaxReportedIDs]
		}
		in.Templates[i] = &nodev1.TemplateReport{EntryId: r.EntryID, SpiffeIds: ids, Count: int64(r.Count)}
	}
	cctx, cancel := context.WithTimeout(ctx, SignTimeout)
	defer cancel()
	if _, err := c.node.ReportTemplates(cctx, in); err != nil {
		return c.mapError(ctx, err)
	}
	return nil
}

// AckBundle tells the server the sequence number of the newest bundle the
// agent has applied. It fails within SignTimeout. A server without the
// call answers codes.Unimplemented (status.Code works on the error).
func (c *Client) AckBundle(ctx context.Context, seq uint64) error {
	cctx, cancel := context.WithTimeout(ctx, SignTimeout)
	defer cancel()
	_, err := c.node.AckBundle(cctx, &nodev1.AckBundleRequest{BundleSequence: seq})
	return c.mapError(ctx, err)
}
