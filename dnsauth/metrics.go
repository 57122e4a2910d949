package dnsauth

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// qtypes and rcodes are the label values the metrics use; anything else counts as "other", so a
// client cannot grow the series without bound.
var (
	qtypes = []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeANY, dns.TypeCAA, dns.TypeCNAME, dns.TypeHTTPS,
		dns.TypeMX, dns.TypeNS, dns.TypeSOA, dns.TypeSVCB, dns.TypeTXT, dns.TypeAXFR, dns.TypeIXFR}
	rcodes = []int{dns.RcodeSuccess, dns.RcodeFormatError, dns.RcodeServerFailure, dns.RcodeNameError,
		dns.RcodeNotImplemented, dns.RcodeRefused, dns.RcodeBadVers}
)

type metrics struct {
	queries   *prometheus.CounterVec
	qnames    []string
	rnames    []string
	series    [][]atomic.Pointer[prometheus.Counter] // [qtype index][rcode index], resolved on first use
	dropped   prometheus.Counter
	truncated prometheus.Counter
	latency   prometheus.Histogram
	dirErrors *prometheus.CounterVec
	rrl       *prometheus.CounterVec
	cookies   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	queries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "switchyard_dnsauth_queries_total",
		Help: "Queries answered, by query type and response code.",
	}, []string{"qtype", "rcode"})
	m := &metrics{
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_dnsauth_dropped_total",
			Help: "Messages not answered (responses sent to the server).",
		}),
		truncated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_dnsauth_truncated_total",
			Help: "UDP responses truncated (TC set) to the client's payload size.",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "switchyard_dnsauth_answer_duration_seconds",
			Help:    "Time from receiving a query to writing its answer, directory lookups included.",
			Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .005, .025, .1, .5, 2},
		}),
		dirErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_dnsauth_directory_errors_total",
			Help: "Failed directory or challenge-store lookups (each answered SERVFAIL), by operation.",
		}, []string{"op"}),
	}
	m.rrl = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "switchyard_dnsauth_rrl_total",
		Help: "UDP answers response-rate limiting dropped or sent truncated (slipped).",
	}, []string{"action"})
	m.cookies = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "switchyard_dnsauth_cookies_total",
		Help: "Queries with a DNS cookie, by whether their server cookie was valid.",
	}, []string{"server_cookie"})
	// A registry that holds them already (another Handler's, or the Handler a configuration
	// reload replaces) lends its own: the handlers then count into the same series.
	var err error
	adopt := func(c prometheus.Collector) prometheus.Collector {
		if err != nil {
			return c
		}
		if rerr := reg.Register(c); rerr != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(rerr, &are) {
				err = rerr
				return c
			}
			return are.ExistingCollector
		}
		return c
	}
	var ok [7]bool
	queries, ok[0] = adopt(queries).(*prometheus.CounterVec)
	m.dropped, ok[1] = adopt(m.dropped).(prometheus.Counter)
	m.truncated, ok[2] = adopt(m.truncated).(prometheus.Counter)
	m.latency, ok[3] = adopt(m.latency).(prometheus.Histogram)
	m.dirErrors, ok[4] = adopt(m.dirErrors).(*prometheus.CounterVec)
	m.rrl, ok[5] = adopt(m.rrl).(*prometheus.CounterVec)
	m.cookies, ok[6] = adopt(m.cookies).(*prometheus.CounterVec)
	if err != nil {
		return nil, err
	}
	if ok != [7]bool{true, true, true, true, true, true, true} {
		return nil, errors.New("dnsauth: a metric of the same name but another kind is registered already")
	}
	qnames := make([]string, 0, len(qtypes)+1)
	for _, t := range qtypes {
		qnames = append(qnames, dns.TypeToString[t])
	}
	rnames := make([]string, 0, len(rcodes)+1)
	for _, r := range rcodes {
		rnames = append(rnames, dns.RcodeToString[r])
	}
	qnames, rnames = append(qnames, "other"), append(rnames, "other")
	// Series are resolved once, on first use: observing then costs an index, not a label hash,
	// and /metrics shows only the combinations that happened.
	m.queries, m.qnames, m.rnames = queries, qnames, rnames
	m.series = make([][]atomic.Pointer[prometheus.Counter], len(qnames))
	for i := range m.series {
		m.series[i] = make([]atomic.Pointer[prometheus.Counter], len(rnames))
	}
	return m, nil
}

func (m *metrics) observe(qtype uint16, rcode int, sent, truncated bool, d time.Duration) {
	if !sent {
		m.dropped.Inc()
		return
	}
	qi := len(qtypes)
	for i, t := range qtypes {
		if t == qtype {
			qi = i
			break
		}
	}
	ri := len(rcodes)
	for i, r := range rcodes {
		if r == rcode {
			ri = i
			break
		}
	}
	c := m.series[qi][ri].Load()
	if c == nil {
		cc := m.queries.WithLabelValues(m.qnames[qi], m.rnames[ri])
		c = &cc
		m.series[qi][ri].Store(c)
	}
	(*c).Inc()
	if truncated {
		m.truncated.Inc()
	}
	m.latency.Observe(d.Seconds())
}
