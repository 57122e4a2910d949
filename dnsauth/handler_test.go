package dnsauth_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/switchyard-dev/switchyard/dnsauth"
	"github.com/switchyard-dev/switchyard/lore"
)

const (
	soa      = "repl.test. 60 IN SOA ns1.repl.test. hostmaster.repl.test. 2026112201 3600 600 604800 60"
	otherSOA = "other.test. 30 IN SOA other.test. hostmaster.other.test. 7 3600 600 604800 30"
)

type answerCase struct {
	name  string
	qname string
	qtype uint16
	rcode int
	aa    bool
	// mapOnly cases need a directory state lore refuses to create.
	mapOnly bool
	answer  []string
	ns      []string
	extra   []string
}

func TestAnswers(t *testing.T) {
	dirs := []struct {
		name string
		dir  dnsauth.Directory
	}{{"lore", loreFixture(t)}, {"map", fixture()}}
	cases := []answerCase{
		{name: "repl A", qname: "blog.replbot.repl.test.", qtype: dns.TypeA, aa: true,
			answer: []string{"blog.replbot.repl.test. 60 IN A 127.0.1.1"}},
		{name: "repl AAAA", qname: "blog.replbot.repl.test.", qtype: dns.TypeAAAA, aa: true,
			answer: []string{"blog.replbot.repl.test. 60 IN AAAA fd00::1:1"}},
		{name: "two addresses", qname: "shop.replbot.repl.test.", qtype: dns.TypeA, aa: true,
			answer: []string{"shop.replbot.repl.test. 60 IN A 127.0.2.1", "shop.replbot.repl.test. 60 IN A 127.0.2.2"}},
		{name: "id name", qname: "r1abc.id.repl.test.", qtype: dns.TypeA, aa: true,
			answer: []string{"r1abc.id.repl.test. 60 IN A 127.0.1.1"}},
		{name: "case echoed (0x20)", qname: "BlOg.RePlBoT.rEpL.TeSt.", qtype: dns.TypeA, aa: true,
			answer: []string{"BlOg.RePlBoT.rEpL.TeSt. 60 IN A 127.0.1.1"}},
		{name: "AAAA nodata v4-only cluster", qname: "shop.replbot.repl.test.", qtype: dns.TypeAAAA, aa: true, ns: []string{soa}},
		{name: "cluster without addresses", qname: "lone.nobody.repl.test.", qtype: dns.TypeA, aa: true, ns: []string{soa}},
		{name: "TXT nodata", qname: "blog.replbot.repl.test.", qtype: dns.TypeTXT, aa: true, ns: []string{soa}},
		{name: "CAA nodata", qname: "blog.replbot.repl.test.", qtype: dns.TypeCAA, aa: true, ns: []string{soa}},
		{name: "HTTPS nodata", qname: "blog.replbot.repl.test.", qtype: dns.TypeHTTPS, aa: true, ns: []string{soa}},
		{name: "SVCB nodata", qname: "blog.replbot.repl.test.", qtype: dns.TypeSVCB, aa: true, ns: []string{soa}},
		{name: "unknown type nodata", qname: "blog.replbot.repl.test.", qtype: 65280, aa: true, ns: []string{soa}},
		{name: "ANY minimal", qname: "blog.replbot.repl.test.", qtype: dns.TypeANY, aa: true,
			answer: []string{"blog.replbot.repl.test. 60 IN A 127.0.1.1"}},
		{name: "ANY without addresses", qname: "lone.nobody.repl.test.", qtype: dns.TypeANY, aa: true,
			answer: []string{`lone.nobody.repl.test. 60 IN HINFO "RFC8482" ""`}},
		{name: "unknown repl", qname: "nope.replbot.repl.test.", qtype: dns.TypeA, rcode: dns.RcodeNameError, aa: true, ns: []string{soa}},
		{name: "unknown id", qname: "zzz.id.repl.test.", qtype: dns.TypeAAAA, rcode: dns.RcodeNameError, aa: true, ns: []string{soa}},
		{name: "too deep", qname: "x.blog.replbot.repl.test.", qtype: dns.TypeA, rcode: dns.RcodeNameError, aa: true, ns: []string{soa}},
		{name: "bad label", qname: "bl*g.replbot.repl.test.", qtype: dns.TypeA, rcode: dns.RcodeNameError, aa: true, ns: []string{soa}},
		{name: "empty non-terminal owner", qname: "replbot.repl.test.", qtype: dns.TypeA, aa: true, ns: []string{soa}},
		{name: "empty non-terminal id", qname: "id.repl.test.", qtype: dns.TypeA, aa: true, ns: []string{soa}},
		{name: "apex SOA", qname: "repl.test.", qtype: dns.TypeSOA, aa: true, answer: []string{soa}},
		{name: "apex NS with glue", qname: "repl.test.", qtype: dns.TypeNS, aa: true,
			answer: []string{"repl.test. 3600 IN NS ns1.repl.test.", "repl.test. 3600 IN NS ns.example.net."},
			extra:  []string{"ns1.repl.test. 3600 IN A 127.0.0.53", "ns1.repl.test. 3600 IN AAAA fd00::53"}},
		{name: "apex A nodata", qname: "repl.test.", qtype: dns.TypeA, aa: true, ns: []string{soa}},
		{name: "apex ANY", qname: "repl.test.", qtype: dns.TypeANY, aa: true, answer: []string{soa}},
		{name: "name server A", qname: "ns1.repl.test.", qtype: dns.TypeA, aa: true,
			answer: []string{"ns1.repl.test. 3600 IN A 127.0.0.53"}},
		{name: "name server AAAA", qname: "ns1.repl.test.", qtype: dns.TypeAAAA, aa: true,
			answer: []string{"ns1.repl.test. 3600 IN AAAA fd00::53"}},
		{name: "name server MX nodata", qname: "ns1.repl.test.", qtype: dns.TypeMX, aa: true, ns: []string{soa}},
		{name: "second zone apex", qname: "other.test.", qtype: dns.TypeSOA, aa: true, answer: []string{otherSOA}},
		{name: "second zone nxdomain", qname: "a.b.other.test.", qtype: dns.TypeA, rcode: dns.RcodeNameError, aa: true, ns: []string{otherSOA}},
		{name: "outside our zones", qname: "example.com.", qtype: dns.TypeA, rcode: dns.RcodeRefused},
		{name: "suffix but not a subdomain", qname: "notrepl.test.", qtype: dns.TypeA, rcode: dns.RcodeRefused},
		{name: "root", qname: ".", qtype: dns.TypeNS, rcode: dns.RcodeRefused},
		{name: "AXFR refused", qname: "repl.test.", qtype: dns.TypeAXFR, rcode: dns.RcodeRefused},
		{name: "IXFR refused", qname: "repl.test.", qtype: dns.TypeIXFR, rcode: dns.RcodeRefused},
		{name: "repl in broken cluster", qname: "orphan.ghost.repl.test.", qtype: dns.TypeA, rcode: dns.RcodeServerFailure, mapOnly: true},
	}
	for _, d := range dirs {
		s := serve(t, newHandler(t, dnsauth.Config{Zones: testZones(), Directory: d.dir}))
		for _, network := range []string{"udp", "tcp"} {
			for _, tc := range cases {
				if tc.mapOnly && d.name != "map" {
					continue
				}
				t.Run(d.name+"/"+network+"/"+tc.name, func(t *testing.T) {
					r := exchange(t, network, s.addr(network), query(tc.qname, tc.qtype))
					checkAnswer(t, r, tc)
				})
			}
		}
	}
}

func checkAnswer(t *testing.T, r *dns.Msg, tc answerCase) {
	t.Helper()
	if r.Rcode != tc.rcode {
		t.Errorf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
	}
	if r.Authoritative != tc.aa {
		t.Errorf("AA %v, want %v", r.Authoritative, tc.aa)
	}
	if r.RecursionAvailable {
		t.Error("RA set by an authoritative server")
	}
	if len(r.Question) != 1 || r.Question[0].Name != tc.qname {
		t.Errorf("question %v, want %q echoed exactly", r.Question, tc.qname)
	}
	for _, sec := range []struct {
		name      string
		got, want []string
	}{{"answer", rrStrings(r.Answer), tc.answer}, {"authority", rrStrings(r.Ns), tc.ns}, {"additional", rrStrings(r.Extra), tc.extra}} {
		if !slices.Equal(sec.got, sec.want) {
			t.Errorf("%s section:\n got  %q\n want %q", sec.name, sec.got, sec.want)
		}
	}
}

func TestOpcodesAndMalformed(t *testing.T) {
	h := newHandler(t, dnsauth.Config{Zones: testZones(), Directory: fixture()})
	s := serve(t, h)
	for _, tc := range []struct {
		name  string
		msg   func() *dns.Msg
		rcode int
	}{
		{"UPDATE", func() *dns.Msg {
			m := new(dns.Msg)
			m.SetUpdate("repl.test.")
			return m
		}, dns.RcodeNotImplemented},
		{"NOTIFY", func() *dns.Msg {
			m := new(dns.Msg)
			m.SetNotify("repl.test.")
			return m
		}, dns.RcodeNotImplemented},
		{"opcode 7", func() *dns.Msg {
			m := query("repl.test.", dns.TypeSOA)
			m.Opcode = 7
			return m
		}, dns.RcodeNotImplemented},
		{"CHAOS class", func() *dns.Msg {
			m := query("version.bind.", dns.TypeTXT)
			m.Question[0].Qclass = dns.ClassCHAOS
			return m
		}, dns.RcodeRefused},
		{"EDNS version 1", func() *dns.Msg {
			m := query("blog.replbot.repl.test.", dns.TypeA)
			m.SetEdns0(1232, false)
			m.IsEdns0().SetVersion(1)
			return m
		}, dns.RcodeBadVers},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The default MsgAcceptFunc of a miekg server already answers some of these; the
			// handler must too, because an embedder may accept everything.
			h := newHandler(t, dnsauth.Config{Zones: testZones(), Directory: fixture()})
			rw := &recorder{network: "udp"}
			h.ServeDNS(rw, tc.msg())
			if rw.msg == nil {
				t.Fatal("no answer")
			}
			if rw.msg.Rcode != tc.rcode {
				t.Errorf("rcode %s, want %s", dns.RcodeToString[rw.msg.Rcode], dns.RcodeToString[tc.rcode])
			}
			r, _, err := (&dns.Client{Net: "udp", Timeout: 5 * time.Second}).Exchange(tc.msg(), s.udp)
			if err == nil && r.Rcode == dns.RcodeSuccess {
				t.Errorf("server answered NOERROR: %v", r)
			}
		})
	}
	t.Run("response is not answered", func(t *testing.T) {
		rw := &recorder{network: "udp"}
		m := query("blog.replbot.repl.test.", dns.TypeA)
		m.Response = true
		h.ServeDNS(rw, m)
		if rw.msg != nil {
			t.Fatalf("answered a response: %v", rw.msg)
		}
	})
	t.Run("no question", func(t *testing.T) {
		rw := &recorder{network: "udp"}
		h.ServeDNS(rw, &dns.Msg{MsgHdr: dns.MsgHdr{Id: 9}})
		if rw.msg == nil || rw.msg.Rcode != dns.RcodeFormatError || rw.msg.Id != 9 {
			t.Fatalf("got %v, want FORMERR", rw.msg)
		}
	})
	t.Run("two OPT records", func(t *testing.T) {
		rw := &recorder{network: "udp"}
		m := query("blog.replbot.repl.test.", dns.TypeA)
		m.SetEdns0(1232, false)
		m.Extra = append(m.Extra, &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT, Class: 512}})
		h.ServeDNS(rw, m)
		if rw.msg == nil || rw.msg.Rcode != dns.RcodeFormatError {
			t.Fatalf("got %v, want FORMERR", rw.msg)
		}
	})
}

func TestDirectoryChangesAreVisible(t *testing.T) {
	d := loreFixture(t)
	ctx := context.Background()
	s := serve(t, newHandler(t, dnsauth.Config{Zones: testZones(), Directory: d}))
	ask := func(name string) *dns.Msg { return exchange(t, "udp", s.udp, query(name, dns.TypeA)) }
	for _, name := range []string{"new.replbot.repl.test.", "r9new.id.repl.test."} {
		if r := ask(name); r.Rcode != dns.RcodeNameError {
			t.Fatalf("before create: %s %s", name, dns.RcodeToString[r.Rcode])
		}
	}
	if _, err := d.CreateRepl(ctx, lore.Repl{ID: "r9new", Owner: "replbot", Slug: "new", Cluster: "a"}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"new.replbot.repl.test.", "r9new.id.repl.test."} {
		if got := rrStrings(ask(name).Answer); !slices.Equal(got, []string{name + " 60 IN A 127.0.1.1"}) {
			t.Fatalf("after create: %q", got)
		}
	}
	if _, err := d.MoveRepl(ctx, "r9new", "b"); err != nil {
		t.Fatal(err)
	}
	if got := rrStrings(ask("new.replbot.repl.test.").Answer); len(got) != 2 || got[0] != "new.replbot.repl.test. 60 IN A 127.0.2.1" {
		t.Fatalf("after move: %q", got)
	}
	if _, err := d.PutCluster(ctx, lore.Cluster{ID: "b", EvalURL: "ws://127.0.0.1:1/", Hosting4: addrs("127.0.2.9")}); err != nil {
		t.Fatal(err)
	}
	if got := rrStrings(ask("new.replbot.repl.test.").Answer); !slices.Equal(got, []string{"new.replbot.repl.test. 60 IN A 127.0.2.9"}) {
		t.Fatalf("after a cluster's addresses changed: %q", got)
	}
	if err := d.DeleteRepl(ctx, "r9new"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"new.replbot.repl.test.", "r9new.id.repl.test."} {
		if r := ask(name); r.Rcode != dns.RcodeNameError {
			t.Fatalf("after delete: %s %s", name, dns.RcodeToString[r.Rcode])
		}
	}
}

func TestDirectoryFailureIsServfail(t *testing.T) {
	d := fixture()
	s := serve(t, newHandler(t, dnsauth.Config{Zones: testZones(), Directory: d}))
	d.setFail(fmt.Errorf("lookup: %w", errDown))
	for _, network := range []string{"udp", "tcp"} {
		for _, name := range []string{"blog.replbot.repl.test.", "nope.replbot.repl.test.", "r1abc.id.repl.test."} {
			r := exchange(t, network, s.addr(network), query(name, dns.TypeA))
			if r.Rcode != dns.RcodeServerFailure {
				t.Errorf("%s %s: rcode %s, want SERVFAIL", network, name, dns.RcodeToString[r.Rcode])
			}
			if len(r.Answer)+len(r.Ns) != 0 {
				t.Errorf("%s %s: SERVFAIL carries records: %v", network, name, r)
			}
		}
	}
	// Names that need no directory still answer.
	if r := exchange(t, "udp", s.udp, query("repl.test.", dns.TypeSOA)); r.Rcode != dns.RcodeSuccess {
		t.Errorf("apex SOA during outage: %s", dns.RcodeToString[r.Rcode])
	}
}

func TestConfigErrors(t *testing.T) {
	d := fixture()
	for _, tc := range []struct {
		name string
		cfg  dnsauth.Config
	}{
		{"no directory", dnsauth.Config{Zones: testZones()}},
		{"no zones", dnsauth.Config{Directory: d}},
		{"unnamed zone", dnsauth.Config{Directory: d, Zones: []dnsauth.Zone{{}}}},
		{"root zone", dnsauth.Config{Directory: d, Zones: []dnsauth.Zone{{Name: "."}}}},
		{"duplicate zone", dnsauth.Config{Directory: d, Zones: []dnsauth.Zone{{Name: "a.test"}, {Name: "A.test."}}}},
		{"bad name server", dnsauth.Config{Directory: d, Zones: []dnsauth.Zone{{Name: "a.test", NS: []dnsauth.NameServer{{}}}}}},
		{"small UDP size", dnsauth.Config{Directory: d, Zones: testZones(), UDPSize: 100}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := dnsauth.New(tc.cfg); err == nil {
				t.Fatal("New accepted an invalid config")
			}
		})
	}
}

// countingLog counts log records.
type countingLog struct {
	slog.Handler
	n atomic.Int64
}

func (c *countingLog) Enabled(context.Context, slog.Level) bool { return true }

func (c *countingLog) Handle(context.Context, slog.Record) error { c.n.Add(1); return nil }

func TestOutageLogsAreRateLimited(t *testing.T) {
	d := fixture()
	d.setFail(errDown)
	logs := &countingLog{Handler: slog.DiscardHandler}
	h := newHandler(t, dnsauth.Config{Zones: testZones(), Directory: d, Logger: slog.New(logs)})
	for range 100 {
		h.ServeDNS(&recorder{network: "udp"}, query("blog.replbot.repl.test.", dns.TypeA))
	}
	// 100 failures within far less than a second: one line (two if a second boundary passed).
	if n := logs.n.Load(); n < 1 || n > 2 {
		t.Fatalf("%d log lines for 100 failures, want 1", n)
	}
}
