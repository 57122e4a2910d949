package dnsauth_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/switchyard-dev/switchyard/dnsauth"
	"github.com/switchyard-dev/switchyard/dnsauth/acmedns"
)

// failingChallenges is a challenge store that is down.
type failingChallenges struct{}

func (failingChallenges) TXT(context.Context, string) ([]string, error) {
	return nil, errors.New("store unreachable")
}

func TestACME(t *testing.T) {
	ctx := context.Background()
	store := acmedns.NewMemStore(acmedns.MemStoreConfig{})
	const sub = "0b2c4c2e-6a53-4b5e-9d7e-1f2a3b4c5d6e"
	full := sub + ".acme.repl.test"
	exp := time.Now().Add(time.Hour)
	for _, v := range []string{"base-value", "wildcard-value"} {
		if err := store.AddTXT(ctx, full, v, exp); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.AddTXT(ctx, "_acme-challenge.blog.replbot.served.test", "served-value", exp); err != nil {
		t.Fatal(err)
	}
	zones := append(testZones(),
		// Delegation: every _acme-challenge name of repl.test is a CNAME to one acme-dns account.
		// (testZones()[0] is repl.test.)
		dnsauth.Zone{Name: "acme.repl.test", ChallengeZone: true, Serial: 1},
		// Served directly from the store under the name itself.
		dnsauth.Zone{Name: "served.test", Serial: 1},
		// Per-name delegation through a hook.
		dnsauth.Zone{Name: "hooked.test", Serial: 1, ACMETarget: "fallback.acme.repl.test",
			ACMEDelegate: func(ctx context.Context, name string) (string, error) {
				switch name {
				case "broken.hooked.test":
					return "", errors.New("delegation table down")
				case "fallback.hooked.test":
					return "", nil
				}
				return "x-" + strings.ReplaceAll(name, ".", "-") + ".validation.example.", nil
			}},
	)
	zones[0].ACMETarget = full
	h := newHandler(t, dnsauth.Config{Zones: zones, Directory: fixture(), Challenges: store})
	s := serve(t, h)
	cname := "_acme-challenge.blog.replbot.repl.test. 1 IN CNAME " + full + "."
	cases := []answerCase{
		{name: "delegated CNAME followed into our challenge zone", qname: "_acme-challenge.blog.replbot.repl.test.", qtype: dns.TypeTXT, aa: true,
			answer: []string{cname, full + `. 1 IN TXT "wildcard-value"`, full + `. 1 IN TXT "base-value"`}},
		{name: "delegated CNAME query", qname: "_acme-challenge.blog.replbot.repl.test.", qtype: dns.TypeCNAME, aa: true, answer: []string{cname}},
		{name: "delegated, A query gets the CNAME", qname: "_acme-challenge.blog.replbot.repl.test.", qtype: dns.TypeA, aa: true, answer: []string{cname}},
		{name: "delegated at the apex", qname: "_acme-challenge.repl.test.", qtype: dns.TypeCNAME, aa: true,
			answer: []string{"_acme-challenge.repl.test. 1 IN CNAME " + full + "."}},
		{name: "challenge zone TXT", qname: strings.ToUpper(full) + ".", qtype: dns.TypeTXT, aa: true,
			answer: []string{strings.ToUpper(full) + `. 1 IN TXT "wildcard-value"`, strings.ToUpper(full) + `. 1 IN TXT "base-value"`}},
		{name: "challenge zone unknown label", qname: "nobody.acme.repl.test.", qtype: dns.TypeTXT, aa: true,
			ns: []string{"acme.repl.test. 60 IN SOA acme.repl.test. hostmaster.acme.repl.test. 1 3600 600 604800 60"}},
		{name: "challenge zone A nodata", qname: full + ".", qtype: dns.TypeA, aa: true,
			ns: []string{"acme.repl.test. 60 IN SOA acme.repl.test. hostmaster.acme.repl.test. 1 3600 600 604800 60"}},
		{name: "served directly", qname: "_acme-challenge.blog.replbot.served.test.", qtype: dns.TypeTXT, aa: true,
			answer: []string{`_acme-challenge.blog.replbot.served.test. 1 IN TXT "served-value"`}},
		{name: "served directly, no values", qname: "_acme-challenge.shop.replbot.served.test.", qtype: dns.TypeTXT, aa: true,
			ns: []string{"served.test. 60 IN SOA served.test. hostmaster.served.test. 1 3600 600 604800 60"}},
		{name: "hook target", qname: "_acme-challenge.www.hooked.test.", qtype: dns.TypeTXT, aa: true,
			answer: []string{"_acme-challenge.www.hooked.test. 1 IN CNAME x-www-hooked-test.validation.example."}},
		{name: "hook falls back to ACMETarget", qname: "_acme-challenge.fallback.hooked.test.", qtype: dns.TypeCNAME, aa: true,
			answer: []string{"_acme-challenge.fallback.hooked.test. 1 IN CNAME fallback.acme.repl.test."}},
		{name: "hook error is SERVFAIL", qname: "_acme-challenge.broken.hooked.test.", qtype: dns.TypeTXT, rcode: dns.RcodeServerFailure},
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, tc := range cases {
			t.Run(network+"/"+tc.name, func(t *testing.T) {
				r := exchange(t, network, s.addr(network), query(tc.qname, tc.qtype))
				checkAnswer(t, r, tc)
			})
		}
	}
	t.Run("store failure is SERVFAIL", func(t *testing.T) {
		h := newHandler(t, dnsauth.Config{Zones: []dnsauth.Zone{{Name: "served.test"}}, Directory: fixture(), Challenges: failingChallenges{}})
		rw := &recorder{network: "udp"}
		h.ServeDNS(rw, query("_acme-challenge.x.served.test.", dns.TypeTXT))
		if rw.msg == nil || rw.msg.Rcode != dns.RcodeServerFailure {
			t.Fatalf("got %v, want SERVFAIL", rw.msg)
		}
	})
	t.Run("values expire", func(t *testing.T) {
		short := acmedns.NewMemStore(acmedns.MemStoreConfig{})
		if err := short.AddTXT(ctx, "_acme-challenge.served.test", "gone", time.Now().Add(-time.Second)); err != nil {
			t.Fatal(err)
		}
		h := newHandler(t, dnsauth.Config{Zones: []dnsauth.Zone{{Name: "served.test"}}, Directory: fixture(), Challenges: short})
		rw := &recorder{network: "udp"}
		h.ServeDNS(rw, query("_acme-challenge.served.test.", dns.TypeTXT))
		if rw.msg == nil || rw.msg.Rcode != dns.RcodeSuccess || len(rw.msg.Answer) != 0 {
			t.Fatalf("expired value served: %v", rw.msg)
		}
	})
}
