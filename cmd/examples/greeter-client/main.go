// Command greeter-client calls greeter-server's two endpoints with the
// identity the local Writ agent gives it on the Workload API
// (SPIFFE_ENDPOINT_SOCKET), and prints the replies:
//
//  1. over mutual TLS with its X.509-SVID (--mtls-addr);
//  2. over TLS with a JWT-SVID for --audience, fetched from the Workload
//     API, as a bearer token (--jwt-addr).
//
// In both it authenticates the server by its X.509-SVID and accepts only
// the server IDs of --server-id. It exits 1 if either call fails or is
// refused.
//
//	greeter-client [--mtls-addr 127.0.0.1:8443] [--jwt-addr 127.0.0.1:8444]
//	               [--server-id ID ...] [--audience greeter] [--spiffe-id ID]
//
// --server-id defaults to the ID `writ dev` gives this user,
// spiffe://<trust domain>/dev/<user> (under `writ dev` the server runs as
// the same user). --spiffe-id chooses which of this process's SVIDs to
// call with, when it has several; by default the Workload API's first.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"writ.dev/writ/cmd/examples/internal/greet"
	"writ.dev/writ/workloadapi/authz"
)

// callTimeout bounds each call.
const callTimeout = 10 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "greeter-client:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("greeter-client", flag.ContinueOnError)
	mtlsAddr := fs.String("mtls-addr", "127.0.0.1:8443", "`host:port` of the server's mTLS endpoint")
	jwtAddr := fs.String("jwt-addr", "127.0.0.1:8444", "`host:port` of the server's JWT-SVID endpoint")
	audience := fs.String("audience", greet.DefaultAudience, "the `audience` of the JWT-SVID sent")
	var serverIDs, self greet.IDList
	fs.Var(&serverIDs, "server-id", "SPIFFE `ID` the server may have (repeatable; default: spiffe://<trust domain>/dev/<user>)")
	fs.Var(&self, "spiffe-id", "call as this SPIFFE `ID`, one of this process's (default: the Workload API's first)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if len(self) > 1 {
		return errors.New("--spiffe-id given more than once")
	}
	want := greet.NoID
	if len(self) == 1 {
		want = self[0]
	}

	src, err := greet.NewX509Source(ctx, want)
	if err != nil {
		return err
	}
	defer src.Close()
	svid, err := src.GetX509SVID()
	if err != nil {
		return err
	}
	if len(serverIDs) == 0 {
		serverIDs = greet.IDList{greet.DevUserID(svid.ID.TrustDomain())}
	}
	serverPolicy := authz.IDs(serverIDs...)
	fmt.Fprintf(out, "greeter-client %s, calling a server with ID %s\n", svid.ID, serverIDs.String())

	failed := 0
	report := func(what, url, reply string, err error) {
		if err != nil {
			failed++
			fmt.Fprintf(out, "%-9s %s: refused: %v\n", what, url, err)
			return
		}
		fmt.Fprintf(out, "%-9s %s: %s\n", what, url, strings.TrimSpace(reply))
	}

	// 1. Mutual TLS: the X.509-SVID authenticates the client.
	mtlsURL := "https://" + *mtlsAddr + greet.Path
	mtlsClient := &http.Client{Timeout: callTimeout, Transport: &http.Transport{TLSClientConfig: authz.ClientTLSConfig(src, serverPolicy)}}
	reply, err := get(ctx, mtlsClient, mtlsURL, "")
	report("mTLS", mtlsURL, reply, err)

	// 2. A JWT-SVID for the server's audience, over TLS that
	// authenticates the server only.
	jwtURL := "https://" + *jwtAddr + greet.Path
	token, err := fetchJWT(ctx, svid.ID, *audience)
	if err == nil {
		jwtClient := &http.Client{Timeout: callTimeout, Transport: &http.Transport{TLSClientConfig: authz.ClientTLSConfigNoClientCert(src, serverPolicy)}}
		reply, err = get(ctx, jwtClient, jwtURL, token)
	}
	report("JWT-SVID", jwtURL, reply, err)

	if failed > 0 {
		return fmt.Errorf("%d of 2 calls failed", failed)
	}
	return nil
}

// fetchJWT asks the Workload API for a JWT-SVID of id for audience.
func fetchJWT(ctx context.Context, id spiffeid.ID, audience string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	client, err := workloadapi.New(ctx)
	if err != nil {
		return "", fmt.Errorf("Workload API: %w", err)
	}
	defer client.Close()
	svid, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience, Subject: id})
	if err != nil {
		return "", fmt.Errorf("fetch a JWT-SVID: %w", err)
	}
	return svid.Marshal(), nil
}

// get calls target, with token as a bearer token if not empty, and returns
// the body of a 200 answer.
func get(ctx context.Context, client *http.Client, target, token string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return "", err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		if ue, ok := errors.AsType[*url.Error](err); ok {
			err = ue.Err // without the method and URL, said already
		}
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return string(body), nil
}
