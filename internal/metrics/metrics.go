package metrics

import (
	"net/http"
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every Writ metric name.
const Namespace = "writ"

// Definition describes one metric.
type Definition struct {
	Name   string
	Type   string // counter, gauge or histogram
	Labels []string
	Help   string
}

// builder registers metrics on a registerer and records their
// definitions.
type builder struct {
	reg  prometheus.Registerer
	defs []Definition
}

func (b *builder) add(c prometheus.Collector, d Definition) {
	b.defs = append(b.defs, d)
	b.reg.MustRegister(c)
}

func (b *builder) counter(name, help string, labels ...string) *prometheus.CounterVec {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	b.add(v, Definition{Name: name, Type: "counter", Labels: labels, Help: help})
	return v
}

func (b *builder) gauge(name, help string, labels ...string) *prometheus.GaugeVec {
	v := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
	b.add(v, Definition{Name: name, Type: "gauge", Labels: labels, Help: help})
	return v
}

func (b *builder) histogram(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	v := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels)
	b.add(v, Definition{Name: name, Type: "histogram", Labels: labels, Help: help})
	return v
}

// funcGauges is a collector of gauges whose values a function returns at
// scrape time.
type funcGauges struct {
	desc *prometheus.Desc
	mu   sync.Mutex // guards fn
	fn   func() []LabeledValue
}

// LabeledValue is one value of a function gauge, with its label values in
// the order of the gauge's labels.
type LabeledValue struct {
	Labels []string
	Value  float64
}

func (b *builder) funcGauge(name, help string, labels ...string) *funcGauges {
	g := &funcGauges{desc: prometheus.NewDesc(name, help, labels, nil)}
	b.add(g, Definition{Name: name, Type: "gauge", Labels: labels, Help: help})
	return g
}

func (g *funcGauges) set(fn func() []LabeledValue) {
	g.mu.Lock()
	g.fn = fn
	g.mu.Unlock()
}

func (g *funcGauges) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }

func (g *funcGauges) Collect(ch chan<- prometheus.Metric) {
	g.mu.Lock()
	fn := g.fn
	g.mu.Unlock()
	if fn == nil {
		return
	}
	for _, v := range fn() {
		ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, v.Value, v.Labels...)
	}
}

// NewRegistry returns a registry with the Go runtime and process
// collectors, for one process's metrics.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Handler serves the metrics of reg in the Prometheus text format.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}

// Definitions returns the definition of every metric of Server and Agent,
// by name.
func Definitions() []Definition {
	s := NewServer(prometheus.NewRegistry())
	a := NewAgent(prometheus.NewRegistry())
	defs := append(slices.Clone(s.defs), a.defs...)
	slices.SortFunc(defs, func(x, y Definition) int {
		if x.Name < y.Name {
			return -1
		}
		if x.Name > y.Name {
			return 1
		}
		return 0
	})
	return defs
}

// latencyBuckets suit operations from tens of microseconds (a signature
// with a key in memory) to seconds (a slow database or HSM).
var latencyBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
