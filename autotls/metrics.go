package autotls

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var daysLeftDesc = prometheus.NewDesc("switchyard_autotls_certificates",
	"Cached managed certificates by days left before expiry (expired, lt7, lt14, lt30, ge30).",
	[]string{"days_left"}, nil)

// daysLeft is the collector of switchyard_autotls_certificates.
type daysLeft struct{ t *TLS }

func (daysLeft) Describe(ch chan<- *prometheus.Desc) { ch <- daysLeftDesc }

func (d daysLeft) Collect(ch chan<- prometheus.Metric) {
	buckets := []string{"expired", "lt7", "lt14", "lt30", "ge30"}
	counts := map[string]float64{}
	d.t.mu.Lock()
	subjects := make([]string, 0, len(d.t.subjects))
	for s := range d.t.subjects {
		subjects = append(subjects, s)
	}
	d.t.mu.Unlock()
	now := time.Now()
	for _, s := range subjects {
		var notAfter time.Time
		for _, c := range d.t.cache.AllMatchingCertificates(s) {
			if c.Leaf != nil && c.Leaf.NotAfter.After(notAfter) {
				notAfter = c.Leaf.NotAfter
			}
		}
		if notAfter.IsZero() {
			d.t.mu.Lock()
			delete(d.t.subjects, s) // evicted from the cache
			d.t.mu.Unlock()
			continue
		}
		left := notAfter.Sub(now)
		switch day := 24 * time.Hour; {
		case left <= 0:
			counts["expired"]++
		case left < 7*day:
			counts["lt7"]++
		case left < 14*day:
			counts["lt14"]++
		case left < 30*day:
			counts["lt30"]++
		default:
			counts["ge30"]++
		}
	}
	for _, b := range buckets {
		ch <- prometheus.MustNewConstMetric(daysLeftDesc, prometheus.GaugeValue, counts[b], b)
	}
}
