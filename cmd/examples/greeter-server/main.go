// Command greeter-server is an example service that authenticates its
// callers by SPIFFE ID, with the SVIDs the local Writ agent serves on the
// Workload API (SPIFFE_ENDPOINT_SOCKET):
//
//   - on --mtls-addr, HTTPS with mutual TLS: it presents its X.509-SVID
//     and admits only clients whose X.509-SVID names an allowed ID;
//   - on --jwt-addr, HTTPS authenticated by its X.509-SVID only, where a
//     caller must send "Authorization: Bearer <JWT-SVID>" for --audience,
//     with an allowed subject (401 without a valid token, 403 if the
//     subject is not allowed).
//
// Both answer GET /hello with a greeting naming the caller. Refusals are
// logged on stderr. No request reaches the agent or the CA: the SVID and
// the bundles are kept current by the Workload API's streams.
//
//	greeter-server [--mtls-addr 127.0.0.1:8443] [--jwt-addr 127.0.0.1:8444]
//	               [--allow-id ID ...] [--audience greeter]
//
// --allow-id defaults to the ID `writ dev` gives this user,
// spiffe://<trust domain>/dev/<user>: under `writ dev` the server and the
// client run as the same user, so they hold the same ID.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"writ.dev/writ/cmd/examples/internal/greet"
	"writ.dev/writ/workloadapi/authz"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "greeter-server:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("greeter-server", flag.ContinueOnError)
	mtlsAddr := fs.String("mtls-addr", "127.0.0.1:8443", "`host:port` of the mTLS endpoint")
	jwtAddr := fs.String("jwt-addr", "127.0.0.1:8444", "`host:port` of the JWT-SVID endpoint")
	audience := fs.String("audience", greet.DefaultAudience, "the JWT-SVID `audience` accepted")
	var allowed greet.IDList
	fs.Var(&allowed, "allow-id", "SPIFFE `ID` allowed to call (repeatable; default: spiffe://<trust domain>/dev/<user>)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))

	src, err := greet.NewX509Source(ctx, greet.NoID)
	if err != nil {
		return err
	}
	defer src.Close()
	jwtCtx, cancel := context.WithTimeout(ctx, greet.StartTimeout)
	jwtSrc, err := workloadapi.NewJWTSource(jwtCtx)
	cancel()
	if err != nil {
		return fmt.Errorf("JWT bundles from the Workload API: %w", err)
	}
	defer jwtSrc.Close()
	svid, err := src.GetX509SVID()
	if err != nil {
		return err
	}
	if len(allowed) == 0 {
		allowed = greet.IDList{greet.DevUserID(svid.ID.TrustDomain())}
	}
	policy := authz.IDs(allowed...)
	jwtAuthz, err := authz.NewJWTAuthorizer(authz.JWTConfig{
		Bundles:  jwtSrc,
		Audience: []string{*audience},
		Policy:   policy,
		Logger:   logger,
	})
	if err != nil {
		return err
	}

	mtlsMux := http.NewServeMux()
	mtlsMux.HandleFunc("GET "+greet.Path, func(w http.ResponseWriter, r *http.Request) {
		caller, err := authz.PeerID(r.TLS) // verified and allowed in the handshake
		if err != nil {
			http.Error(w, "no caller", http.StatusUnauthorized)
			return
		}
		fmt.Fprintf(w, "Hello, %s! You called %s over mTLS.\n", caller, svid.ID)
	})
	jwtMux := http.NewServeMux()
	jwtMux.Handle("GET "+greet.Path, jwtAuthz.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		caller, _ := authz.CallerID(r.Context())
		fmt.Fprintf(w, "Hello, %s! You called %s with a JWT-SVID for audience %q.\n", caller, svid.ID, *audience)
	})))
	errorLog := log.New(os.Stderr, "greeter-server: ", 0) // refused handshakes
	servers := []*http.Server{
		{Addr: *mtlsAddr, Handler: mtlsMux, TLSConfig: authz.ServerTLSConfig(src, policy), ErrorLog: errorLog, ReadHeaderTimeout: 10 * time.Second},
		{Addr: *jwtAddr, Handler: jwtMux, TLSConfig: authz.ServerTLSConfigNoClientCert(src), ErrorLog: errorLog, ReadHeaderTimeout: 10 * time.Second},
	}
	listeners := make([]net.Listener, len(servers))
	for i, s := range servers {
		if listeners[i], err = net.Listen("tcp", s.Addr); err != nil {
			for _, l := range listeners[:i] {
				l.Close()
			}
			return err
		}
	}
	fmt.Printf("greeter-server %s\n  mTLS:     https://%s%s\n  JWT-SVID: https://%s%s (audience %q)\n  allowing: %s\n",
		svid.ID, listeners[0].Addr(), greet.Path, listeners[1].Addr(), greet.Path, *audience, allowed.String())

	errc := make(chan error, len(servers))
	for i, s := range servers {
		go func() { errc <- s.ServeTLS(listeners[i], "", "") }()
	}
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		_ = s.Shutdown(shutdownCtx)
	}
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	return nil
}
