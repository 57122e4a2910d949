package dnsauth_test

import (
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/switchyard-dev/switchyard/dnsauth"
)

// rawUDP sends m and returns the raw response, so tests can check its size on the wire.
func rawUDP(t *testing.T, addr string, m *dns.Msg) ([]byte, *dns.Msg) {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	r := new(dns.Msg)
	if err := r.Unpack(buf[:n]); err != nil {
		t.Fatalf("unpack %d bytes: %v", n, err)
	}
	if r.Id != m.Id {
		t.Fatalf("id %d, want %d", r.Id, m.Id)
	}
	return buf[:n], r
}

func TestEDNSAndTruncation(t *testing.T) {
	s := serve(t, newHandler(t, dnsauth.Config{Zones: testZones(), Directory: fixture()}))
	const big = "big.crowd.repl.test." // 40 A records: 690 bytes compressed, 1400 uncompressed
	for _, tc := range []struct {
		name      string
		edns      bool
		size      uint16
		do        bool
		option    bool
		maxLen    int
		truncated bool
	}{
		{name: "no EDNS: 512 bytes", maxLen: 512, truncated: true},
		{name: "EDNS 512 with DO", edns: true, size: 512, do: true, maxLen: 512, truncated: true},
		{name: "EDNS below 512 counts as 512", edns: true, size: 100, maxLen: 512, truncated: true},
		{name: "EDNS 4096 capped at 1232, compressed to fit", edns: true, size: 4096, maxLen: 1232},
		{name: "unknown option ignored", edns: true, size: 1232, option: true, maxLen: 1232},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := query(big, dns.TypeA)
			if tc.edns {
				m.SetEdns0(tc.size, tc.do)
				if tc.option {
					opt := m.IsEdns0()
					opt.Option = append(opt.Option, &dns.EDNS0_LOCAL{Code: 65001, Data: []byte("x")})
				}
			}
			raw, r := rawUDP(t, s.udp, m)
			if len(raw) > tc.maxLen {
				t.Errorf("response is %d bytes, limit %d", len(raw), tc.maxLen)
			}
			if r.Rcode != dns.RcodeSuccess || r.Truncated != tc.truncated {
				t.Errorf("rcode %s TC %v, want NOERROR TC %v", dns.RcodeToString[r.Rcode], r.Truncated, tc.truncated)
			}
			if !tc.truncated && len(r.Answer) != 40 {
				t.Errorf("%d answers, want 40", len(r.Answer))
			}
			opt := r.IsEdns0()
			if !tc.edns {
				if opt != nil {
					t.Errorf("OPT in the answer to a query without EDNS")
				}
				return
			}
			if opt == nil {
				t.Fatal("OPT dropped")
			}
			if opt.UDPSize() != 1232 || opt.Version() != 0 || opt.Do() != tc.do || len(opt.Option) != 0 {
				t.Errorf("OPT size %d version %d DO %v options %v; want 1232, 0, %v, none",
					opt.UDPSize(), opt.Version(), opt.Do(), opt.Option, tc.do)
			}
		})
	}
	t.Run("TCP retry returns everything", func(t *testing.T) {
		r := exchange(t, "tcp", s.tcp, query(big, dns.TypeA))
		if r.Truncated || len(r.Answer) != 40 {
			t.Fatalf("TC %v, %d answers; want the whole answer", r.Truncated, len(r.Answer))
		}
	})
	t.Run("BADVERS keeps the OPT", func(t *testing.T) {
		m := query(big, dns.TypeA)
		m.SetEdns0(1232, true)
		m.IsEdns0().SetVersion(1)
		_, r := rawUDP(t, s.udp, m)
		opt := r.IsEdns0()
		if r.Rcode != dns.RcodeBadVers || opt == nil || opt.Version() != 0 || len(r.Answer) != 0 {
			t.Fatalf("got rcode %s opt %v answers %d; want BADVERS, OPT version 0, no answer",
				dns.RcodeToString[r.Rcode], opt, len(r.Answer))
		}
	})
}

func TestTCPPipelining(t *testing.T) {
	s := serve(t, newHandler(t, dnsauth.Config{Zones: testZones(), Directory: fixture()}))
	c, err := dns.DialTimeout("tcp", s.tcp, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	// More than miekg's default MaxTCPQueries (128), all written before any answer is read.
	const n = 300
	names := []string{"blog.replbot.repl.test.", "nope.replbot.repl.test.", "r2def.id.repl.test."}
	want := map[uint16]int{}
	for i := 0; i < n; i++ {
		m := query(names[i%len(names)], dns.TypeA)
		m.Id = uint16(i + 1)
		want[m.Id] = []int{dns.RcodeSuccess, dns.RcodeNameError, dns.RcodeSuccess}[i%len(names)]
		if err := c.WriteMsg(m); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	for i := 0; i < n; i++ {
		r, err := c.ReadMsg()
		if err != nil {
			t.Fatalf("read %d of %d: %v", i, n, err)
		}
		rc, ok := want[r.Id]
		if !ok {
			t.Fatalf("unexpected or duplicate id %d", r.Id)
		}
		if r.Rcode != rc {
			t.Errorf("id %d: rcode %s, want %s", r.Id, dns.RcodeToString[r.Rcode], dns.RcodeToString[rc])
		}
		delete(want, r.Id)
	}
}
