package hosting

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Outcomes of a hosting request, the "outcome" label of Proxy's metrics.
const (
	outcomeOK          = "ok"           // conman (and so the repl) answered; any status of the app's
	outcomeUnknownHost = "unknown_host" // 404: no repl by that name here
	outcomeBadRequest  = "bad_request"  // 400: no Host
	outcomeDirectory   = "directory"    // 503: lore failed
	outcomePlacement   = "placement"    // 503: placement failed or has no capacity
	outcomeBackend     = "backend"      // 502: the repl could not be started or reached
	outcomeDraining    = "draining"     // 503: Proxy is shutting down
	outcomeClient      = "client"       // the client went away (or broke its request) mid-way
)

type proxyMetrics struct {
	byOutcome map[string]outcomeMetrics // resolved once: no label hashing per request
	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	upgrades  prometheus.Gauge
	retries   prometheus.Counter
}

type outcomeMetrics struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

func newProxyMetrics(reg prometheus.Registerer) (*proxyMetrics, error) {
	m := &proxyMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "switchyard", Subsystem: "hosting", Name: "requests_total",
			Help: "Hosting requests by outcome: ok, unknown_host, bad_request, directory, placement, backend, draining, client.",
		}, []string{"outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "switchyard", Subsystem: "hosting", Name: "request_duration_seconds",
			Help:    "Time from request to the end of the answer (of an upgraded connection: to its close), by outcome.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"outcome"}),
		upgrades: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "switchyard", Subsystem: "hosting", Name: "upgraded_connections",
			Help: "Upgraded (WebSocket) connections being carried.",
		}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "switchyard", Subsystem: "hosting", Name: "retries_total",
			Help: "Requests sent to another VM after conman could not be reached or was draining.",
		}),
	}
	m.byOutcome = map[string]outcomeMetrics{}
	for _, o := range []string{outcomeOK, outcomeUnknownHost, outcomeBadRequest, outcomeDirectory, outcomePlacement, outcomeBackend, outcomeDraining, outcomeClient} {
		m.byOutcome[o] = outcomeMetrics{requests: m.requests.WithLabelValues(o), duration: m.duration.WithLabelValues(o)}
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.upgrades, m.retries} {
		if err := reg.Register(c); err != nil {
			return nil, errors.Join(errors.New("hosting: register hosting metrics"), err)
		}
	}
	return m, nil
}

// serverCollector reports a Server's client connections by state.
type serverCollector struct {
	s    *Server
	desc *prometheus.Desc
}

func newServerCollector(s *Server) *serverCollector {
	return &serverCollector{s: s, desc: prometheus.NewDesc("switchyard_hosting_client_connections",
		"Fast-path client connections by state: serving (a request, or waiting for one with a goroutine), loop (held by an event loop, see ServerConfig.EventLoops), parked_warm and parked_cold (idle, see ServerConfig.ParkIdleAfter).",
		[]string{"state"}, nil)}
}

func (c *serverCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *serverCollector) Collect(ch chan<- prometheus.Metric) {
	c.s.mu.Lock()
	all := len(c.s.conns)
	c.s.mu.Unlock()
	looped := c.s.loops.count()
	warm, cold := c.s.park.Stats()
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(max(all-looped, 0)), "serving")
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(looped), "loop")
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(warm), "parked_warm")
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(cold), "parked_cold")
}
