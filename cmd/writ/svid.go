package main

// Workload commands: `writ svid fetch` here, `writ jwt fetch|validate` in
// jwt.go. They are clients of the agent's SPIFFE Workload API, through
// go-spiffe's client, and identify the caller as any workload would be:
// by the process that runs them.
//
//	writ svid fetch [--write DIR] [--spiffe-id ID]
//	writ jwt fetch --audience A [--audience B ...] [--spiffe-id ID]
//	writ jwt validate --audience A --token TOKEN|-
//
// Each takes --socket-path (a path, or unix:///absolute/path), else
// $SPIFFE_ENDPOINT_SOCKET (unix:///absolute/path), else a default: the
// packaged agent's /run/writ-agent/public/api.sock if it exists, else
// /tmp/writ-agent/public/api.sock; --output text|json; --timeout. A
// default socket is dialed only if no other user can have made it
// (unixsock.CheckDial): in /tmp any local user could create
// /tmp/writ-agent first and serve SVIDs and bundles of their choosing. A
// socket the user names is dialed as named.
//
// `svid fetch --write DIR` writes, in DIR (created 0700 if missing), the
// chosen SVID (the first, the Workload API's default, or --spiffe-id) as
// spiffe-helper names them: svid.pem (certificate chain, leaf first),
// svid_key.pem (PKCS#8 "PRIVATE KEY", mode 0600) and bundle.pem (the
// X.509 authorities of the SVID's trust domain); and each federated
// trust domain's authorities in federated_bundle.<trust domain>.pem, never
// mixed into bundle.pem. The files change as one set, as writ helper run
// writes them (see package svidfiles). Private keys are never printed.

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"writ.dev/writ/ca/entry"
	"writ.dev/writ/internal/unixsock"
	"writ.dev/writ/svidfiles"
	"writ.dev/writ/workloadapi"
)

const (
	flagWorkloadSocket = "socket-path"
	flagSVIDWrite      = "write"
	// defaultWorkloadSocket is the agent's default Workload API socket.
	defaultWorkloadSocket = "/tmp/writ-agent/public/api.sock"
	// packagedWorkloadSocket is the Workload API socket of the agent run
	// by packaging/systemd/writ-agent.service.
	packagedWorkloadSocket = "/run/writ-agent/public/api.sock"
	// workloadSocketDefaultText describes the default of --socket-path.
	workloadSocketDefaultText = "$" + spiffewl.SocketEnv + ", else " + packagedWorkloadSocket + " if present, else " + defaultWorkloadSocket +
		"; a default (unlike a socket named here or in $" + spiffewl.SocketEnv + ") is used only if it and its directories belong to you or root"
	// defaultWorkloadTimeout bounds each Workload API call. The agent may
	// hold a call while it gets an SVID signed.
	defaultWorkloadTimeout = 10 * time.Second
)

// File names written by `svid fetch --write`, as spiffe-helper names them.
const (
	svidFileName       = "svid.pem"
	svidKeyFileName    = "svid_key.pem"
	svidBundleFileName = "bundle.pem"
)

// workloadFlags returns the flags of every Workload API command,
// followed by flags.
func workloadFlags(flags ...cli.Flag) []cli.Flag {
	return append(flags,
		&cli.StringFlag{
			Name:        flagWorkloadSocket,
			Usage:       "the agent's Workload API socket: a `PATH`, or unix:///absolute/path",
			DefaultText: workloadSocketDefaultText,
			TakesFile:   true,
		},
		&cli.StringFlag{Name: flagOutput, Value: "text", Usage: "output `FORMAT`: text or json"},
		&cli.DurationFlag{Name: flagTimeout, Value: defaultWorkloadTimeout, Usage: "time limit (a `DURATION`) of each call to the agent"},
	)
}

func svidCommand() *cli.Command {
	return &cli.Command{
		Name:   "svid",
		Usage:  "get this process's X.509-SVIDs from the agent's Workload API",
		Action: groupAction,
		Subcommands: []*cli.Command{
			{
				Name:  "fetch",
				Usage: "print the X.509-SVIDs this process is entitled to, and optionally write one to files",
				Description: "--write DIR writes " + svidFileName + " (chain, leaf first), " + svidKeyFileName + " (PKCS#8, mode 0600),\n" +
					svidBundleFileName + " (X.509 authorities of the SVID's trust domain) and federated_bundle.<trust domain>.pem\n" +
					"for each federated trust domain. The SVID written is the first (the default) or --spiffe-id's.",
				Flags: workloadFlags(
					&cli.StringFlag{Name: flagSVIDWrite, Usage: "write the SVID, its key and bundles to `DIR` (created 0700 if missing)", TakesFile: true},
					&cli.StringFlag{Name: flagSPIFFEID, Usage: "only the SVID with this SPIFFE `ID`"},
				),
				Action: svidFetch,
			},
		},
	}
}

// workloadCmd is what a Workload API command needs besides its own flags.
type workloadCmd struct {
	format outputFormat
	socket string // absolute path
	// checkSocket: socket is a default, not named by the user; it is
	// dialed only if unixsock.CheckDial accepts it.
	checkSocket bool
	timeout     time.Duration
}

// newWorkloadCmd checks the flags common to Workload API commands and
// refuses positional arguments.
func newWorkloadCmd(c *cli.Context) (*workloadCmd, error) {
	format, err := parseOutputFormat(c.String(flagOutput))
	if err != nil {
		return nil, usagef(c, "%v", err)
	}
	if c.Args().Present() {
		return nil, usagef(c, "unexpected argument %q", c.Args().First())
	}
	timeout := c.Duration(flagTimeout)
	if timeout <= 0 {
		return nil, usagef(c, "--%s must be positive", flagTimeout)
	}
	socket, isDefault, err := workloadSocket(c)
	if err != nil {
		return nil, err
	}
	return &workloadCmd{format: format, socket: socket, checkSocket: isDefault, timeout: timeout}, nil
}

// workloadSocket returns the socket to use: --socket-path (a path, made
// absolute, or a unix:/// address), else $SPIFFE_ENDPOINT_SOCKET (an
// address), else a default (isDefault), which must pass checkDefaultSocket
// before it is dialed.
func workloadSocket(c *cli.Context) (path string, isDefault bool, err error) {
	if c.IsSet(flagWorkloadSocket) {
		v := c.String(flagWorkloadSocket)
		if v == "" {
			return "", false, usagef(c, "--%s is empty", flagWorkloadSocket)
		}
		if strings.HasPrefix(v, "unix:") {
			p, err := workloadapi.ParseEndpointAddr(v)
			if err != nil {
				return "", false, usagef(c, "invalid --%s: %v", flagWorkloadSocket, err)
			}
			return p, false, nil
		}
		p, err := absSocket(v)
		return p, false, err
	}
	if v := os.Getenv(spiffewl.SocketEnv); v != "" {
		p, err := workloadapi.ParseEndpointAddr(v)
		if err != nil {
			return "", false, fmt.Errorf("invalid $%s: %w", spiffewl.SocketEnv, err)
		}
		return p, false, nil
	}
	return chooseDefaultSocket(packagedWorkloadSocket, defaultWorkloadSocket), true, nil
}

// chooseDefaultSocket returns the first of candidates that exists (as a
// socket or anything else: checkDefaultSocket judges it), else the last.
func chooseDefaultSocket(candidates ...string) string {
	for _, p := range candidates {
		if _, err := os.Lstat(p); err == nil {
			return p
		}
	}
	return candidates[len(candidates)-1]
}

// checkDefaultSocket reports an error unless path, a socket the user did
// not name, is one that only this user or root can have made.
func checkDefaultSocket(path string) error {
	err := unixsock.CheckDial(path)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("cannot connect to the Workload API socket %s: %w (is the agent running? name its socket with --%s or $%s)", path, err, flagWorkloadSocket, spiffewl.SocketEnv)
	}
	return fmt.Errorf("refusing the default Workload API socket %s, which another user may have made: %w; if it is your agent's, name it with --%s or $%s", path, err, flagWorkloadSocket, spiffewl.SocketEnv)
}

func absSocket(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("socket path %s: %w", p, err)
	}
	if err := workloadapi.CheckSocketPath(abs); err != nil {
		return "", err
	}
	return abs, nil
}

// workloadClient is a go-spiffe Workload API client that remembers why
// the socket could not be reached.
type workloadClient struct {
	*spiffewl.Client
	socket  string
	timeout time.Duration

	mu      sync.Mutex // guards dialErr
	dialErr error
}

// dial returns a client of the Workload API at w.socket. The connection
// is made by the first call.
func (w *workloadCmd) dial(ctx context.Context) (*workloadClient, error) {
	if w.checkSocket {
		// Once accepted, only this user or root can change what the
		// path names: dialing it afterwards is safe.
		if err := checkDefaultSocket(w.socket); err != nil {
			return nil, err
		}
	}
	wc := &workloadClient{socket: w.socket, timeout: w.timeout}
	addr, err := workloadapi.EndpointAddr(w.socket)
	if err != nil {
		return nil, err
	}
	dialer := func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", w.socket)
		if err != nil {
			wc.mu.Lock()
			wc.dialErr = err
			wc.mu.Unlock()
		}
		return conn, err
	}
	wc.Client, err = spiffewl.New(ctx, spiffewl.WithAddr(addr), spiffewl.WithDialOptions(grpc.WithContextDialer(dialer)))
	if err != nil {
		return nil, fmt.Errorf("Workload API socket %s: %w", w.socket, err)
	}
	return wc, nil
}

// callContext returns the context of one call: ctx limited to the timeout.
func (w *workloadClient) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, w.timeout)
}

// callError turns an error of a call into what the user needs to know.
func (w *workloadClient) callError(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("invalid answer from the Workload API: %w", err)
	}
	switch st.Code() {
	case codes.Unavailable:
		w.mu.Lock()
		dialErr := w.dialErr
		w.mu.Unlock()
		if dialErr != nil {
			if oe, ok := errors.AsType[*net.OpError](dialErr); ok && oe.Err != nil {
				dialErr = oe.Err
			}
			return fmt.Errorf("cannot connect to the Workload API socket %s: %v", w.socket, dialErr)
		}
	case codes.PermissionDenied:
		return fmt.Errorf("the agent refused this process (uid %d): %s", os.Geteuid(), st.Message())
	case codes.DeadlineExceeded:
		return fmt.Errorf("no answer from the Workload API within %s (the agent may be waiting for the server)", w.timeout)
	}
	return errors.New(st.Message())
}

// jsonSVID is an X.509-SVID as `svid fetch --output json` prints it. It
// never holds the private key.
type jsonSVID struct {
	SPIFFEID     string   `json:"spiffe_id"`
	Hint         string   `json:"hint"`
	NotBefore    string   `json:"not_before"` // RFC 3339, UTC
	NotAfter     string   `json:"not_after"`  // RFC 3339, UTC
	DNSNames     []string `json:"dns_names"`
	SerialNumber string   `json:"serial_number"` // hex
	ChainLength  int      `json:"chain_length"`  // leaf and intermediates
	// AuthorityID is the leaf's authority key ID in lowercase hex: the
	// ID `writ ca x509 show` gives the CA that signed it.
	AuthorityID string `json:"authority_id"`
}

func svidToJSON(s *x509svid.SVID) *jsonSVID {
	leaf := s.Certificates[0]
	return &jsonSVID{
		SPIFFEID:     s.ID.String(),
		Hint:         s.Hint,
		NotBefore:    leaf.NotBefore.UTC().Format(time.RFC3339),
		NotAfter:     leaf.NotAfter.UTC().Format(time.RFC3339),
		DNSNames:     nonNil(leaf.DNSNames),
		SerialNumber: hex.EncodeToString(leaf.SerialNumber.Bytes()),
		ChainLength:  len(s.Certificates),
		AuthorityID:  hex.EncodeToString(leaf.AuthorityKeyId),
	}
}

func svidFetch(c *cli.Context) error {
	w, err := newWorkloadCmd(c)
	if err != nil {
		return err
	}
	var want spiffeid.ID
	if c.IsSet(flagSPIFFEID) {
		if want, err = entry.ParseID(c.String(flagSPIFFEID)); err != nil {
			return err
		}
	}
	dir := c.String(flagSVIDWrite)
	if c.IsSet(flagSVIDWrite) && dir == "" {
		return usagef(c, "--%s is empty", flagSVIDWrite)
	}

	client, err := w.dial(c.Context)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := client.callContext(c.Context)
	defer cancel()
	x509ctx, err := client.FetchX509Context(ctx)
	if err != nil {
		return client.callError(err)
	}
	svids := x509ctx.SVIDs
	if !want.IsZero() {
		svids = slices.DeleteFunc(slices.Clone(svids), func(s *x509svid.SVID) bool { return s.ID != want })
		if len(svids) == 0 {
			return fmt.Errorf("this process has no SVID for %s (it has %d other)", want, len(x509ctx.SVIDs))
		}
	}
	if dir != "" {
		if err := writeSVIDFiles(dir, svids[0], x509ctx); err != nil {
			return err
		}
	}

	if w.format == jsonOutput {
		out := make([]*jsonSVID, len(svids))
		for i, s := range svids {
			out[i] = svidToJSON(s)
		}
		return writeJSON(c.App.Writer, out)
	}
	t := newTextWriter(c.App.Writer)
	t.count(len(svids), "SVID", "SVIDs")
	for _, s := range svids {
		j := svidToJSON(s)
		t.line("")
		t.field("SPIFFE ID", j.SPIFFEID)
		if j.Hint != "" {
			t.field("Hint", j.Hint)
		}
		if tid, ok := strings.CutPrefix(j.Hint, workloadapi.TemplateHintPrefix); ok {
			t.field("Template entry", tid)
		}
		t.field("Not before", j.NotBefore)
		t.field("Not after", j.NotAfter)
		for _, n := range j.DNSNames {
			t.field("DNS name", n)
		}
		t.field("Serial number", j.SerialNumber)
		t.field("Chain length", fmt.Sprint(j.ChainLength))
		t.field("Signed by CA", j.AuthorityID)
	}
	if dir != "" {
		t.line("")
		t.line("Wrote the SVID of %s to %s", entry.Printable(svids[0].ID.String()), entry.Printable(dir))
	}
	return t.Flush()
}

// writeSVIDFiles writes s, its key and the bundles of x509ctx to dir as
// writ helper run does, and removes the files of trust domains no longer
// federated.
func writeSVIDFiles(dir string, s *x509svid.SVID, x509ctx *spiffewl.X509Context) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("--%s: %w", flagSVIDWrite, err)
	}
	td := s.ID.TrustDomain()
	if _, err := x509ctx.Bundles.GetX509BundleForTrustDomain(td); err != nil {
		return fmt.Errorf("the Workload API sent no bundle for %s: %w", td.Name(), err)
	}
	cfg := svidfiles.DefaultConfig()
	cfg.CertDir = dir
	cfg.SVIDFileName, cfg.SVIDKeyFileName, cfg.SVIDBundleFileName = svidFileName, svidKeyFileName, svidBundleFileName
	_, err := cfg.WriteX509Files(s, x509ctx.Bundles)
	return err
}

func pemCerts(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}
