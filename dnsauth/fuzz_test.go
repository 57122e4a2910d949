package dnsauth_test

import (
	"testing"

	"github.com/miekg/dns"

	"github.com/switchyard-dev/switchyard/dnsauth"
	"github.com/switchyard-dev/switchyard/dnsauth/acmedns"
)

// FuzzServeDNS feeds raw packets to the handler the way a miekg server does (unpack, then
// ServeDNS) over UDP and TCP, and checks the answer: it parses, echoes the ID, is a response,
// fits the client's UDP size, and is written at most once. Seeds: testdata/fuzz/FuzzServeDNS.
func FuzzServeDNS(f *testing.F) {
	for _, m := range []*dns.Msg{
		query("blog.replbot.repl.test.", dns.TypeA),
		query("big.crowd.repl.test.", dns.TypeA),
		query("_acme-challenge.blog.replbot.repl.test.", dns.TypeTXT),
	} {
		b, _ := m.Pack()
		f.Add(b)
	}
	store := acmedns.NewMemStore(acmedns.MemStoreConfig{})
	zones := append(testZones(), dnsauth.Zone{Name: "acme.repl.test", ChallengeZone: true})
	zones[0].ACMETarget = "x.acme.repl.test"
	h, err := dnsauth.New(dnsauth.Config{Zones: zones, Directory: fixture(), Challenges: store})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		req := new(dns.Msg)
		if err := req.Unpack(raw); err != nil {
			return // the server answers FORMERR from the header itself; the handler never sees it
		}
		for _, network := range []string{"udp", "tcp"} {
			rw := &recorder{network: network}
			h.ServeDNS(rw, req)
			if rw.writes > 1 {
				t.Fatalf("%s: %d writes", network, rw.writes)
			}
			if rw.writes == 0 {
				if !req.Response {
					t.Fatalf("%s: a query went unanswered: %v", network, req)
				}
				continue
			}
			if rw.msg == nil {
				t.Fatalf("%s: unparseable answer %x to %v", network, rw.raw, req)
			}
			if rw.msg.Id != req.Id || !rw.msg.Response {
				t.Fatalf("%s: answer id %d QR %v to id %d", network, rw.msg.Id, rw.msg.Response, req.Id)
			}
			if network == "udp" {
				limit := 512
				if opt := req.IsEdns0(); opt != nil {
					limit = int(min(max(opt.UDPSize(), 512), 1232))
				}
				if len(rw.raw) > limit {
					t.Fatalf("udp answer of %d bytes exceeds %d", len(rw.raw), limit)
				}
			}
		}
	})
}
