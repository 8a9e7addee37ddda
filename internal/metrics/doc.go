// Package metrics defines every Prometheus metric Writ exports: Server
// for `writ server run`, Agent for `writ agent run`. Each process builds
// one set on a registry of its own (never the global default registry)
// and passes it to its components in their Config's Metrics field:
//
//	reg := prometheus.NewRegistry()
//	m := metrics.NewServer(reg)
//	nodeapi.New(nodeapi.Config{Metrics: m, ...})
//	http.Handle("/metrics", metrics.Handler(reg))
//
// Every method is safe on a nil *Server or *Agent and then does nothing,
// so that components take metrics as optional. Labels hold only bounded
// values (kinds, states, gRPC method names and codes, datastore
// operations), never a SPIFFE ID. Definitions returns every metric with
// its type, labels and help text; docs/metrics.md is checked against it.
package metrics
