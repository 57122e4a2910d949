package conman

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	containers    prometheus.Gauge
	starts        *prometheus.CounterVec
	startSeconds  prometheus.Histogram
	exits         *prometheus.CounterVec
	sessions      prometheus.Gauge
	forwardErrors *prometheus.CounterVec
	heartbeats    *prometheus.CounterVec
	detached      prometheus.Counter
	detachedNow   prometheus.Gauge
	resumed       prometheus.Counter
	resumeRefused *prometheus.CounterVec
	expired       prometheus.Counter
	reg           prometheus.Registerer
}

// newMetrics creates the server's metrics and registers them with reg (nil: not registered).
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		containers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchyard_conman_containers", Help: "Repl containers running on this VM.",
		}),
		starts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_conman_container_starts_total", Help: "Container start attempts by result (ok, error).",
		}, []string{"result"}),
		startSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "switchyard_conman_container_start_seconds", Help: "Time to start a repl's container.",
			Buckets: []float64{.005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5, 15},
		}),
		exits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_conman_container_exits_total", Help: "Container exits by reason (stopped, unexpected).",
		}, []string{"reason"}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchyard_conman_attach_sessions", Help: "Attach (shell) sessions open.",
		}),
		forwardErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_conman_forward_errors_total", Help: "Hosting requests conman answered itself, by Switchyard-Error reason.",
		}, []string{"reason"}),
		heartbeats: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_conman_heartbeats_total", Help: "Heartbeats sent to placement by result (ok, error).",
		}, []string{"result"}),
		detached: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_conman_shells_detached_total", Help: "Shells whose attach connection broke, kept for a resume.",
		}),
		detachedNow: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchyard_conman_shells_detached", Help: "Shells detached now, waiting for a resume.",
		}),
		resumed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_conman_shells_resumed_total", Help: "Resumes that re-attached a shell.",
		}),
		resumeRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_conman_shell_resumes_refused_total", Help: "Resumes refused, by reason (session-gone, offset).",
		}, []string{"reason"}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_conman_shells_expired_total", Help: "Detached shells killed: resume window over, or past the per-repl cap.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	m.reg = reg
	for _, c := range m.all() {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("conman: register metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) all() []prometheus.Collector {
	return []prometheus.Collector{m.containers, m.starts, m.startSeconds, m.exits, m.sessions, m.forwardErrors, m.heartbeats,
		m.detached, m.detachedNow, m.resumed, m.resumeRefused, m.expired}
}

// unregister removes the metrics from the registerer, for a successor in the same process.
func (m *metrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.all() {
		m.reg.Unregister(c)
	}
}
