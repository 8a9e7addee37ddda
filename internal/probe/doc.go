// Package probe serves a process's operational HTTP endpoints: /live and
// /ready for health checks, and /metrics when a metrics handler is given.
//
//	srv, err := probe.Listen(probe.Config{Address: "9090", Ready: check, Metrics: h})
//	g.Serve("health", srv.Addr(), srv.Serve, srv.Stop)
//
// /live answers 200 while the process serves HTTP at all. /ready answers
// 200 when Ready returns nil and 503 with Ready's error otherwise; the
// error text is shown to whoever can reach the port, so checks return
// short fixed reasons, never detail that could carry a secret. A bare
// port ("9090" or ":9090") listens on loopback only; give a host (for
// example 0.0.0.0:9090) to listen elsewhere.
package probe
