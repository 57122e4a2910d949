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
	if _, err := dnsauth.New(dnsauth.Config{Zones: testZones(), Directory: d, Registerer: reg}); err == nil {
		t.Error("registering the metrics twice succeeded")
	}
}
