package placement

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the Controlplane's Prometheus metrics. With a nil Registerer they are created but
// never registered, so the hot path needs no nil checks.
type metrics struct {
	place     *prometheus.HistogramVec // seconds, by pool and result
	conflicts prometheus.Counter
	released  *prometheus.CounterVec // by reason
	expired   prometheus.Counter
	adopted   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, c *Controlplane) (*metrics, error) {
	m := &metrics{
		place: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "switchyard", Subsystem: "placement", Name: "place_duration_seconds",
			Help:    "Time to answer Place, by pool and result (ok, no_capacity, invalid, error). Pools without VMs or a strategy are labelled \"other\".",
			Buckets: []float64{5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 5e-3, 25e-3},
		}, []string{"pool", "result"}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "switchyard", Subsystem: "placement", Name: "commit_conflicts_total",
			Help: "Place commits refused by the store's check-and-set (a concurrent Place took the room or the repl) and retried.",
		}),
		released: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "switchyard", Subsystem: "placement", Name: "released_total",
			Help: "Assignments released, by reason (release, avoided, dead, not-running).",
		}, []string{"reason"}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "switchyard", Subsystem: "placement", Name: "vms_expired_total",
			Help: "VMs marked dead because their heartbeats stopped.",
		}),
		adopted: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "switchyard", Subsystem: "placement", Name: "adopted_total",
			Help: "Running repls without an assignment adopted from a VM's heartbeat.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	vms := prometheus.NewDesc("switchyard_placement_vms", "VMs by pool and state.", []string{"pool", "state"}, nil)
	used := prometheus.NewDesc("switchyard_placement_containers", "Containers assigned, by pool.", []string{"pool"}, nil)
	desired := prometheus.NewDesc("switchyard_placement_desired_vms", "The autoscaling signal: desired VM count by pool.", []string{"pool"}, nil)
	cs := []prometheus.Collector{m.place, m.conflicts, m.released, m.expired, m.adopted,
		collectorFunc{descs: []*prometheus.Desc{vms, used, desired}, collect: func(ch chan<- prometheus.Metric) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			scales, err := c.Autoscale(ctx)
			if err != nil {
				return
			}
			for _, s := range scales {
				p := poolLabel(s.Pool)
				ch <- prometheus.MustNewConstMetric(vms, prometheus.GaugeValue, float64(s.Active), p, string(Active))
				ch <- prometheus.MustNewConstMetric(vms, prometheus.GaugeValue, float64(s.Cordoned), p, string(Cordoned))
				ch <- prometheus.MustNewConstMetric(vms, prometheus.GaugeValue, float64(s.Draining), p, string(Draining))
				ch <- prometheus.MustNewConstMetric(vms, prometheus.GaugeValue, float64(s.Dead), p, string(Dead))
				ch <- prometheus.MustNewConstMetric(used, prometheus.GaugeValue, float64(s.Containers), p)
				ch <- prometheus.MustNewConstMetric(desired, prometheus.GaugeValue, float64(s.Desired), p)
			}
		}},
	}
	for _, col := range cs {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("placement: registering metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) observePlace(pool string, start time.Time, err error) {
	result := "ok"
	switch {
	case err == nil:
	case errors.Is(err, ErrNoCapacity):
		result = "no_capacity"
	case errors.Is(err, ErrInvalid):
		result = "invalid"
	default:
		result = "error"
	}
	m.place.WithLabelValues(pool, result).Observe(time.Since(start).Seconds())
}

type collectorFunc struct {
	descs   []*prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (f collectorFunc) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range f.descs {
		ch <- d
	}
}

func (f collectorFunc) Collect(ch chan<- prometheus.Metric) { f.collect(ch) }
