package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// ErrAddress: an address that is not host:port or a port.
var ErrAddress = errors.New("probe: invalid address")

// readyTimeout bounds one readiness check.
const readyTimeout = 2 * time.Second

// Config configures an HTTP endpoint.
type Config struct {
	// Address is host:port, or a bare port for loopback.
	Address string
	// Ready, if set, serves /live and /ready; it returns why the process
	// is not ready, or nil.
	Ready func(ctx context.Context) error
	// Metrics, if set, is served at /metrics.
	Metrics http.Handler
}

// Server is a listening HTTP endpoint.
type Server struct {
	lis net.Listener
	srv *http.Server
}

// ResolveAddress returns the address to listen on for addr: a bare port
// becomes a loopback address.
func ResolveAddress(addr string) (string, error) {
	port := strings.TrimPrefix(addr, ":")
	if !strings.Contains(port, ":") {
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && port != "0") {
			return "", fmt.Errorf("%w %q: give host:port or a port number", ErrAddress, addr)
		}
		return net.JoinHostPort("127.0.0.1", port), nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", fmt.Errorf("%w %q: %v", ErrAddress, addr, err)
	}
	return addr, nil
}

// Listen binds cfg.Address. It serves nothing until Serve.
func Listen(cfg Config) (*Server, error) {
	addr, err := ResolveAddress(cfg.Address)
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return &Server{lis: lis, srv: &http.Server{
		Handler:           Handler(cfg.Ready, cfg.Metrics),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    8 << 10,
	}}, nil
}

// Addr returns the address the server listens on.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Serve serves until Stop; it then returns http.ErrServerClosed.
func (s *Server) Serve() error { return s.srv.Serve(s.lis) }

// Stop closes the listener and every connection, whether or not Serve
// was called.
func (s *Server) Stop() {
	_ = s.srv.Close()
	_ = s.lis.Close()
}

// Handler returns the handler of the endpoints: /live and /ready if ready
// is set, /metrics if metrics is.
func Handler(ready func(ctx context.Context) error, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	if ready != nil {
		mux.HandleFunc("GET /live", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			fmt.Fprintln(w, "live")
		})
		mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
			defer cancel()
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("Cache-Control", "no-store")
			if err := ready(ctx); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintf(w, "not ready: %v\n", err)
				return
			}
			fmt.Fprintln(w, "ready")
		})
	}
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	return mux
}

// Endpoint is a listening Server and what it serves.
type Endpoint struct {
	// Name says what the endpoint serves, for logs.
	Name string
	*Server
}

// ListenEndpoints binds the metrics and health endpoints whose addresses
// are set; when both name the same port (not port 0, which asks for any
// free port each time), one endpoint serves both.
func ListenEndpoints(metricsAddr string, metricsHandler http.Handler, healthAddr string, ready func(context.Context) error) ([]Endpoint, error) {
	var out []Endpoint
	m, _ := ResolveAddress(metricsAddr)
	h, _ := ResolveAddress(healthAddr)
	_, port, _ := net.SplitHostPort(m)
	same := metricsAddr != "" && m == h && port != "0"
	if metricsAddr != "" {
		cfg := Config{Address: metricsAddr, Metrics: metricsHandler}
		name := "metrics endpoint"
		if same {
			cfg.Ready, name = ready, "metrics and health endpoint"
		}
		srv, err := Listen(cfg)
		if err != nil {
			return nil, fmt.Errorf("metrics address: %w", err)
		}
		out = append(out, Endpoint{name, srv})
	}
	if healthAddr != "" && !same {
		srv, err := Listen(Config{Address: healthAddr, Ready: ready})
		if err != nil {
			for _, e := range out {
				e.Stop()
			}
			return nil, fmt.Errorf("health address: %w", err)
		}
		out = append(out, Endpoint{"health endpoint", srv})
	}
	return out, nil
}
