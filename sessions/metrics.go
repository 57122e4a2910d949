package sessions

import (
	"errors"
	"github.com/switchyard-dev/switchyard/internal/eventloop"

	"github.com/prometheus/client_golang/prometheus"
)

// proxyMetrics are the proxy's Prometheus metrics. With a nil Registerer they are
// still updated (cheaply) but never exported.
//
// Exported series:
//
//	switchyard_proxy_sessions_total{stage}             counter: attempts by outcome stage
//	switchyard_proxy_session_setup_seconds             histogram: request to established (ok only)
//	switchyard_proxy_session_duration_seconds          histogram: established to end
//	switchyard_proxy_sessions_active                   gauge: established sessions
//	switchyard_proxy_sessions_inflight                 gauge: admitted attempts (setup + established)
//	switchyard_proxy_session_retries_total             counter: extra place+attach attempts
//	switchyard_proxy_session_bytes_total{direction}    counter: relayed bytes (client_to_backend,
//	                                                   backend_to_client), added when a session ends
//	switchyard_proxy_sessions_event_loop               gauge: sessions an event loop relays now
//	switchyard_proxy_session_loop_handbacks_total{reason}
//	                                                   counter: sessions an event loop gave back to
//	                                                   goroutines: bulk, frame, eof, error,
//	                                                   blocked, drain, refused, gomaxprocs
//	                                                   (see EventLoops)
//	switchyard_proxy_session_reattaches_total{result}  counter: SubprotocolV2 sessions whose conman
//	                                                   leg was lost, by result: resumed (same shell),
//	                                                   restarted (a new shell, maybe on another VM),
//	                                                   moved (the repl left the cluster: 4421),
//	                                                   failed (no VM within ReattachTimeout: 1013)
//	switchyard_proxy_session_reattach_seconds          histogram: the pause a client saw, from
//	                                                   losing conman to the session running again
type proxyMetrics struct {
	outcomes  *prometheus.CounterVec
	setup     prometheus.Histogram
	duration  prometheus.Histogram
	active    prometheus.Gauge
	inflightG prometheus.Gauge
	retries   prometheus.Counter
	bytes     *prometheus.CounterVec
	inLoop    prometheus.Gauge
	handbacks *prometheus.CounterVec
	reattach  *prometheus.CounterVec
	pause     prometheus.Histogram
}

// Re-attach results, the values of switchyard_proxy_session_reattaches_total's label.
const (
	reattachResumed   = "resumed"
	reattachRestarted = "restarted"
	reattachMoved     = "moved"
	reattachFailed    = "failed"
)

// loopReasons are the reasons an event loop gives a session back to its goroutines.
var loopReasons = eventloop.Reasons

// allStages lists every stage so each series exists from the start (rates need both).
var allStages = []string{StageOK, StageToken, StagePlacement, StageDial, StageBackend, StageClient, StageLimit}

func newSessionsMetrics(reg prometheus.Registerer) (*proxyMetrics, error) {
	m := &proxyMetrics{
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_proxy_sessions_total",
			Help: "Session attempts by outcome stage (ok, token, placement, dial, backend, client, limit).",
		}, []string{"stage"}),
		setup: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "switchyard_proxy_session_setup_seconds",
			Help:    "Time from the client's request to an established session (token, placement, attach with retries, upgrade).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "switchyard_proxy_session_duration_seconds",
			Help:    "Lifetime of established sessions.",
			Buckets: []float64{1, 10, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 72 * 3600},
		}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchyard_proxy_sessions_active",
			Help: "Established sessions (the autoscaling signal for Eval).",
		}),
		inflightG: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchyard_proxy_sessions_inflight",
			Help: "Admitted session attempts, in setup or established (what MaxSessions limits).",
		}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_proxy_session_retries_total",
			Help: "Place-and-attach attempts after the first, across all sessions.",
		}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_proxy_session_bytes_total",
			Help: "Bytes relayed (WebSocket frames, headers included in splice mode; message payloads in frame mode), by direction.",
		}, []string{"direction"}),
		inLoop: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchyard_proxy_sessions_event_loop",
			Help: "Established sessions relayed by an event loop now (sessions.Config.EventLoops).",
		}),
		handbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_proxy_session_loop_handbacks_total",
			Help: "Proxy an event loop gave back to goroutine relaying, by reason (bulk data, a close or big frame, EOF, a read error, a write that would block, drain, refused at entry, or GOMAXPROCS lowered to the loops' number).",
		}, []string{"reason"}),
		reattach: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_proxy_session_reattaches_total",
			Help: "switchyard.v2 sessions whose conman leg was lost, by result (resumed: the same shell; restarted: a new shell; moved: the repl left the cluster; failed: no VM in time).",
		}, []string{"result"}),
		pause: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "switchyard_proxy_session_reattach_seconds",
			Help:    "The pause a switchyard.v2 client saw: from losing conman's leg to the session running again (resumed or restarted).",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
	}
	for _, r := range []string{reattachResumed, reattachRestarted, reattachMoved, reattachFailed} {
		m.reattach.WithLabelValues(r)
	}
	for _, r := range loopReasons {
		m.handbacks.WithLabelValues(r)
	}
	for _, st := range allStages {
		m.outcomes.WithLabelValues(st)
	}
	m.bytes.WithLabelValues("client_to_backend")
	m.bytes.WithLabelValues("backend_to_client")
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.outcomes, m.setup, m.duration, m.active, m.inflightG, m.retries, m.bytes, m.inLoop, m.handbacks, m.reattach, m.pause} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, errors.New("sessions: sessions metrics already registered (one Proxy per Registerer, or wrap it with prometheus.WrapRegistererWith)")
			}
			return nil, err
		}
	}
	return m, nil
}

func (m *proxyMetrics) outcome(stage string) { m.outcomes.WithLabelValues(stage).Inc() }

func (m *proxyMetrics) inflight(n int) { m.inflightG.Set(float64(n)) }
