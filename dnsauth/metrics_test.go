package dnsauth_test

import (
	"testing"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard-dev/switchyard/dnsauth"
)

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	d := fixture()
	h := newHandler(t, dnsauth.Config{Zones: testZones(), Directory: d, Registerer: reg})
	ask := func(name string, qtype uint16) {
		rw := &recorder{network: "udp"}
		h.ServeDNS(rw, query(name, qtype))
	}
	ask("blog.replbot.repl.test.", dns.TypeA)
	ask("blog.replbot.repl.test.", dns.TypeA)
	ask("nope.replbot.repl.test.", dns.TypeAAAA)
	ask("example.com.", dns.TypeA)
	ask("blog.replbot.repl.test.", 65000) // "other"
	d.setFail(errDown)
	ask("blog.replbot.repl.test.", dns.TypeA)
	big := query("big.crowd.repl.test.", dns.TypeA)
	d.setFail(nil)
	h.ServeDNS(&recorder{network: "udp"}, big)

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			switch {
			case m.GetCounter() != nil:
				got[key] = m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				got[key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	for key, want := range map[string]float64{
		"switchyard_dnsauth_queries_total,qtype=A,rcode=NOERROR":     3,
		"switchyard_dnsauth_queries_total,qtype=AAAA,rcode=NXDOMAIN": 1,
		"switchyard_dnsauth_queries_total,qtype=A,rcode=REFUSED":     1,
		"switchyard_dnsauth_queries_total,qtype=other,rcode=NOERROR": 1,
		"switchyard_dnsauth_queries_total,qtype=A,rcode=SERVFAIL":    1,
		"switchyard_dnsauth_directory_errors_total,op=repl":          1,
		"switchyard_dnsauth_truncated_total":                         1,
		"switchyard_dnsauth_answer_duration_seconds":                 7,
	} {
		if got[key] != want {
			t.Errorf("%s = %v, want %v", key, got[key], want)
		}
	}
}

// Two Handlers on one registry (two CoreDNS server blocks, or a reload) count into the same
// series instead of failing; a metric of the same name and another kind is an error.
func TestMetricsShared(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	for range 2 {
		h := newHandler(t, dnsauth.Config{Zones: testZones(), Directory: fixture(), Registerer: reg})
		h.ServeDNS(&recorder{network: "udp"}, query("blog.replbot.repl.test.", dns.TypeA))
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() == "switchyard_dnsauth_queries_total" {
			for _, m := range mf.GetMetric() {
				n += m.GetCounter().GetValue()
			}
		}
	}
	if n != 2 {
		t.Fatalf("two handlers' answers counted %v, want 2", n)
	}

	other := prometheus.NewRegistry()
	other.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "switchyard_dnsauth_dropped_total", Help: "a gauge"}))
	if _, err := dnsauth.New(dnsauth.Config{Zones: testZones(), Directory: fixture(), Registerer: other}); err == nil {
		t.Fatal("a gauge named as a dnsauth counter was taken for one")
	}
}
